"""The `faiss` backend's folder: one model's index as files, each checked against the manifest's checksum.

<dir>/index.faiss       the FAISS index (cxr.store.faiss_index), ids 0..n-1
<dir>/table/            per-image metadata as memory-mapped columns (cxr.store.image_table)
<dir>/vectors.f16.npy   with `rerank`: the full vectors (float16) to re-score a compressed index's candidates
<dir>/manifest.json     model, export checksum, dim, count, index type, created, and the size and
                        SHA-256 of every file above, verified before any is read
<dir>/skipped.csv       inputs that could not be read, with the reason
<dir>/changes/          commits made since the build was written (cxr.store.faiss_changes)
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from cxr.store.errors import IndexCorruptError

INDEX_FILE = "index.faiss"
TABLE_DIR = "table"
VECTORS_FILE = "vectors.f16.npy"
MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.csv"
CHANGES_DIR = "changes"  # cxr.store.faiss_changes
CHUNK_BYTES = 1 << 20


def file_checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def checksummed(directory: Path) -> list[str]:
    """The build's files: not its manifest and skipped list, nor the commits made since (changes/)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST_FILE, SKIPPED_FILE)
                  and p.relative_to(directory).parts[0] != CHANGES_DIR)


def write_skipped(path: Path, skipped) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is not readable JSON; rebuild the index") from exc
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path} is not a manifest (a JSON object); rebuild the index")
    return manifest


def listed_files(directory: Path, manifest: dict) -> list[str]:
    """The files the manifest lists, each a path inside the index folder."""
    files = manifest.get("files")
    if not isinstance(files, dict) or (TABLE_DIR + "/" + "table.json") not in files:
        raise IndexCorruptError(f"index {directory} was built by an older version (no checksummed metadata "
                                "table): rebuild it with `cxr index build`")
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise IndexCorruptError(f"{directory / MANIFEST_FILE} lists a file outside the index folder; "
                                    "rebuild the index")
    return list(files)
