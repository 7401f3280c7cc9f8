"""`cxr backup create`: what must survive, copied consistently while the gateway and followers run, into
a new timestamped folder with a manifest.

Order matters where one thing records another: a PACS cache (its follow position) first, then the report
ledgers, the audit log and the API keys, the indexes last. So a restored follower replays from a position
no later than the index's commits (and adds nothing twice), and every deletion the audit log records as
done is done in the index copy too.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from cxr import __version__
from cxr.backup import sources
from cxr.backup.copying import make_folder, remove, sqlite_snapshot, stream, sync_tree
from cxr.backup.manifest import (
    API_KEYS,
    AUDIT_LOG,
    FAISS_INDEX,
    MANIFEST_FILE,
    PACS_CACHE,
    REPORT_LEDGER,
    SETTINGS,
    BackupError,
    Item,
    Manifest,
)
from cxr.files import write_durably
from cxr.settings import CONFIG_FILE, Settings
from cxr.store.faiss_files import MANIFEST_FILE as INDEX_MANIFEST

PREFIX = "cxr-backup-"
PACS_CACHE_SUFFIX = ".dicomweb"  # indexing.dicomweb_build.CACHE_SUFFIX (a test keeps the two the same)
LEDGER_SUFFIX = ".sqlite"
# Not in any backup, and why (the manifest and docs/backup.md say so too).
LEFT_OUT = (
    {"what": "model_repository", "why": "rebuilt from the registry and weights by `make export` (or `cxr export`)"},
    {"what": "cache_dir, run_dir", "why": "built twins, Triton's backend folder, pid files and logs: remade on start"},
    {"what": "index_copy_dir and the gateway's private copies", "why": "copies of the index, remade on load"},
    {"what": "<index_dir>/<model>.partial", "why": "a file build in progress; it resumes or starts again"},
    {"what": "TLS certificates and keys, jwt_jwks", "why": "the hospital's PKI and identity provider keep them; "
                                                          "`cxr certs dev` makes development ones"},
    {"what": "triton_admin_key_file", "why": "written anew by each `cxr serve`"},
    {"what": "the Milvus index's data", "why": "milvus-backup copies a Milvus cluster; the manifest records "
                                               "where it was (see `milvus`)"},
)


def create_backup(settings: Settings, root: Path, to: Path, audit_key: bool = True,
                  now: dt.datetime | None = None) -> tuple[Path, Manifest]:
    """Back up what the settings (of the checkout at `root`) name into a new folder under `to`:
    <to>/cxr-backup-<UTC time>/, written as a hidden .partial folder and renamed once complete."""
    started = time.monotonic()
    now = now or dt.datetime.now(dt.timezone.utc)
    _check_target(to, settings)
    make_folder(to)
    name = _free_name(to, PREFIX + now.strftime("%Y%m%dT%H%M%SZ"))
    staging = to / f".{name}.partial"
    make_folder(staging)
    manifest = Manifest(created=now.isoformat(timespec="seconds"), version=__version__, left_out=list(LEFT_OUT))
    try:
        for step in (_pacs_caches, _ledgers, _audit_log, _api_keys, _faiss_indexes, _settings_file):
            step(settings, root, staging, manifest, audit_key)
        manifest.milvus = _milvus(settings)
        manifest.layout = _layout(settings, root)
        manifest.seconds = round(time.monotonic() - started, 3)
        write_durably(staging / MANIFEST_FILE, manifest.to_json().encode())
        os.chmod(staging / MANIFEST_FILE, 0o600)
        sync_tree(staging)
        staging.rename(to / name)
    except BaseException:
        remove(staging)
        raise
    return to / name, manifest


def _free_name(to: Path, name: str) -> str:
    candidate, n = name, 1
    while (to / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _add(manifest: Manifest, item: Item, files: dict[str, dict]) -> None:
    manifest.items.append(item)
    manifest.files.update({f"{item.path}/{name}" if name else item.path: c for name, c in files.items()})


def _entries(folder: Path) -> list[Path]:
    """What a folder holds that is not hidden (staging, retired and private copies are)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _pacs_caches(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    for folder in _entries(settings.index_dir):
        if folder.is_dir() and folder.name.endswith(PACS_CACHE_SUFFIX):
            path = f"caches/{folder.name}"
            _add(manifest, Item(PACS_CACHE, folder.name, path), sources.pacs_cache(folder, staging / path))


def _reports_folder(settings: Settings) -> Path:
    """The folder of the report ledgers: where Settings.reports_path puts every model's."""
    return settings.reports_path(PREFIX).parent


def _ledgers(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    folder = _reports_folder(settings)
    for ledger in _entries(folder):
        if ledger.is_file() and ledger.suffix == LEDGER_SUFFIX:
            path = f"reports/{ledger.name}"
            copied, reports = sqlite_snapshot(ledger, staging / path)
            _add(manifest, Item(REPORT_LEDGER, ledger.stem, path, {"reports": reports}), {"": copied})


def _audit_log(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    live = settings.audit_log
    if live is None or not (live.is_file() or sources.rotated(live)):
        return
    files, details = sources.audit_log(live, staging / "audit", audit_key)
    _add(manifest, Item(AUDIT_LOG, live.name, "audit", details), files)


def _api_keys(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    path = settings.api_keys_file
    if path is not None and path.is_file():  # replaced whole when it changes (gateway.api_keys)
        _add(manifest, Item(API_KEYS, path.name, f"keys/{path.name}"), {"": stream(path, staging / "keys" / path.name)})


def _faiss_indexes(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    for folder in _entries(settings.index_dir):
        if (folder / INDEX_MANIFEST).is_file():
            path = f"indexes/{folder.name}"
            files, details = sources.faiss_index(folder, staging / path)
            _add(manifest, Item(FAISS_INDEX, folder.name, path, details), files)


def _settings_file(settings: Settings, root: Path, staging: Path, manifest: Manifest, audit_key: bool) -> None:
    path = root / CONFIG_FILE
    if path.is_file():
        _add(manifest, Item(SETTINGS, CONFIG_FILE, f"settings/{CONFIG_FILE}"),
             {"": stream(path, staging / "settings" / CONFIG_FILE)})


def _layout(settings: Settings, root: Path) -> dict:
    """Where the items came from: for the operator restoring on a host laid out otherwise."""
    paths = {"root": root, "index_dir": settings.index_dir, "reports": _reports_folder(settings),
             "audit_log": settings.audit_log, "api_keys_file": settings.api_keys_file}
    return {name: str(path) if path is not None else None for name, path in paths.items()}


def _milvus(settings: Settings) -> dict | None:
    """Where the Milvus index is and what names its collections: milvus-backup copies them (docs/backup.md)."""
    if settings.index_backend != "milvus":
        return None
    from cxr.dicomweb import redacted
    from cxr.registry import list_models
    from cxr.store.milvus.aliases import alias_of

    return {"uri": redacted(settings.milvus_uri), "aliases": {model: alias_of(model) for model in list_models()},
            "copy_with": "milvus-backup create -n <name> (a cluster; Milvus Lite: stop its process, copy the folder)"}


def _check_target(to: Path, settings: Settings) -> None:
    """Refuse a backup folder inside what it backs up: each backup would copy the ones before it."""
    to = to.resolve()
    for inside in (settings.index_dir, _reports_folder(settings)):
        if to == inside.resolve() or inside.resolve() in to.parents:
            raise BackupError(f"--to {to} is inside {inside}, which the backup copies: give a folder elsewhere "
                              "(another disk, or a mount the backups are shipped from)")
