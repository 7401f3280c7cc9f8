"""What every build's manifest carries, whatever the backend: the model, dimension and export that
built it, checked before it is served, and a secret for opaque ids.

Every build keeps a secret in its manifest (`id_key`, carried over from the build it replaces) from
which a store derives opaque stand-ins for image and study ids (VectorStore.opaque_id): what callers
who may not see patient data get instead of ids that archives derive from file names or patient numbers.
"""

from __future__ import annotations

import secrets

from cxr.store.errors import IndexMismatchError

ID_KEY = "id_key"  # the manifest's secret for opaque ids
CALIBRATION_KEY = "calibration"  # the finding suggestions' calibration (cxr.suggestions), when one was fitted
FORMAT_KEY = "format"
# The index format this version writes, and the newest it reads. 1: a build, replaced whole (a manifest
# without the key); 2: a build that takes commits (StoreBackend.apply), named by its base_id. A format-1
# build is read as it is and takes commits too: no upgrade step is needed.
INDEX_FORMAT = 2


def id_key_for(previous_manifest: dict | None) -> str:
    """A new build's id key: the one of the build it replaces, so opaque ids stay the same, else a new one."""
    return (previous_manifest or {}).get(ID_KEY) or secrets.token_hex(32)


def check_model(where: str, manifest: dict, model: str | None, dim: int | None, export_sha256: str | None) -> None:
    """Refuse an index built by another model, dimension or export, saying how to rebuild it."""
    rebuild = f"rebuild it with `cxr index build --model {model or '<model>'} ...`"
    found = manifest.get(FORMAT_KEY, 1)
    if not isinstance(found, int) or found > INDEX_FORMAT:
        raise IndexMismatchError(f"index {where} is in format {found}, newer than this cxr-retrieval reads (up to "
                                 f"{INDEX_FORMAT}): run the version that wrote it, or {rebuild} with this one")
    if (model and manifest.get("model") != model) or (dim and manifest.get("dim") != dim):
        raise IndexMismatchError(f"index {where} was built with {manifest.get('model')} ({manifest.get('dim')}-d); "
                                 f"the gateway serves {model} ({dim}-d): {rebuild}")
    built_with = manifest.get("export_sha256")
    if export_sha256 and built_with != export_sha256:
        raise IndexMismatchError(
            f"index {where} was built with another export of {model} (image tower sha256 {str(built_with)[:12]}…); "
            f"the export served now is sha256 {export_sha256[:12]}…: {rebuild}")


def check_change(where: str, manifest: dict, change) -> None:
    """Refuse a change (cxr.store.interface.Change) adding vectors of another dimension or export than the
    build's, in every backend alike: a change that names no export is refused by a build that names one."""
    if change.vectors is None:
        return
    dim, export = manifest.get("dim"), manifest.get("export_sha256") or ""
    rebuild = f"or rebuild the index with `cxr index build --model {manifest.get('model')} ...` first"
    if change.vectors.shape[1:] != (dim,):
        raise IndexMismatchError(f"{where}: a change adds vectors of shape {change.vectors.shape} to an index of "
                                 f"{dim}-d vectors: embed the images with the export the index was built with, "
                                 f"{rebuild}")
    if change.export_sha256 != export:
        raise IndexMismatchError(
            f"{where}: a change adds vectors of export sha256 {change.export_sha256[:12] or '(none)'}… to an index "
            f"built with export sha256 {export[:12] or '(none)'}…: embed the images with that export, {rebuild}")
