"""The folders the gateway writes while it serves, by the setting that places each.

Deployments mount the model repository and the indexes read-only (docker-compose.yml, deploy/k8s); what
the gateway writes must be elsewhere, on something writable, or it is lost: an audit trail that cannot
be written fails every call, a report ledger that cannot be opened leaves every hit without its report.
tests/unit/deploy checks each folder against the manifests' mounts, and the gateway logs at start each one
it cannot write. Administrators' deletions also write the index folder (cxr.store's commits), which
deployments keep read-only: there a deletion is refused with the remedy (cxr.store.errors).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cxr.settings import Settings

log = logging.getLogger("cxr.gateway")

# What goes wrong when the folder of each setting cannot be written.
CONSEQUENCES = {
    "audit_log": "every call will fail (no audit line, no answer)",
    "reports_dir": "reports cannot be attached to hits (the gateway opens the ledger to record the studies it "
                   "serves): set reports_dir (CXR_REPORTS_DIR) to a writable folder that the intake writes too",
    "index_copy_dir": "indexes are copied to the temp dir instead, which may be too small",
}


def written_folders(settings: Settings) -> dict[str, Path]:
    """Setting -> the folder the gateway writes because of it (every model's ledger is in the same one)."""
    folders = {"reports_dir": settings.reports_path(settings.model).parent}
    if settings.audit_log:
        folders["audit_log"] = settings.audit_log.parent
    if settings.index_copy_dir:
        folders["index_copy_dir"] = settings.index_copy_dir
    return folders


def writable(folder: Path) -> bool:
    """Whether this process may create files in `folder`, or create it: access(2) on it or on the nearest
    folder above that exists (a read-only mount answers EROFS, whoever asks)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def check_writable(settings: Settings) -> list[str]:
    """Log each written folder that cannot be written, with what it costs; the settings, named."""
    folders = written_folders(settings)
    refused = [name for name, folder in folders.items() if not writable(folder)]
    for name in refused:
        log.error("%s: %s cannot be written by this process (a read-only mount, or another owner): %s", name,
                  folders[name], CONSEQUENCES[name])
    return refused
