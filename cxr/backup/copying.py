"""Files into a backup folder, each hashed as it is copied (the bytes checked are the bytes written),
owner-only and synced, and recorded for the manifest.

Files that writers append lines to (an audit log, a cache's listing) are copied up to their last whole
line: a copy taken while a line is being written must not end in half of it. SQLite databases are
copied with SQLite's online backup API, which reads one consistent snapshot while writers go on (a
file copy of a database in WAL mode may miss commits still in its -wal file, or tear a page).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

from cxr.backup.manifest import CHUNK_BYTES, checksum
from cxr.files import sync_directory

FILE_MODE, FOLDER_MODE = 0o600, 0o700  # a backup holds patient data and secrets: its owner's only
SQLITE_TIMEOUT_S = 30.0


class Changed(Exception):
    """A file is not what the writer's own record says it is: it was replaced while it was copied."""


def stream(source: Path, target: Path, expected: dict | None = None, whole_lines: bool = False) -> dict:
    """Copy `source` to the new file `target` (owner-only, synced); its size and SHA-256. `expected`: the
    checksum `source` must have (raises Changed otherwise); `whole_lines`: up to its last newline."""
    make_folder(target.parent)
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as src:
        length = _whole_lines(src) if whole_lines else os.fstat(src.fileno()).st_size
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(descriptor, "wb") as dst:
            while size < length:
                chunk = src.read(min(CHUNK_BYTES, length - size))
                if not chunk:
                    break  # shortened while copied: the checksum below tells
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    copied = {"bytes": size, "sha256": digest.hexdigest()}
    if expected is not None and (copied["bytes"], copied["sha256"]) != (expected["bytes"], expected["sha256"]):
        raise Changed(str(source))
    return copied


def _whole_lines(f) -> int:
    """How many bytes of the open file `f` end at its last newline (0: not one whole line yet)."""
    end = os.fstat(f.fileno()).st_size
    position = end
    while position > 0:
        start = max(0, position - CHUNK_BYTES)
        f.seek(start)
        block = f.read(position - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            f.seek(0)
            return start + newline + 1
        position = start
    f.seek(0)
    return 0


def write_bytes(target: Path, data: bytes) -> dict:
    make_folder(target.parent)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def sqlite_snapshot(source: Path, target: Path) -> tuple[dict, int]:
    """One consistent snapshot of the database `source` (in WAL mode, written meanwhile) as the single
    self-contained file `target`; its checksum and its number of reports."""
    make_folder(target.parent)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    reader = sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=SQLITE_TIMEOUT_S)  # never creates one
    copy = sqlite3.connect(target)
    try:
        reader.backup(copy)  # in one step: one read transaction, a snapshot that writers never restart
        copy.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal beside it in the backup
        if copy.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError(f"{source}: the copy fails SQLite's quick_check")
        reports = copy.execute("SELECT count(*) FROM reports").fetchone()[0] if _has_table(copy, "reports") else 0
    finally:
        copy.close()
        reader.close()
    with target.open("rb") as f:
        os.fsync(f.fileno())
    return checksum(target), reports


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def make_folder(folder: Path) -> None:
    """`folder` and every missing folder above it, owner-only (mkdir's `parents` gives those the umask's mode)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(mode=FOLDER_MODE, exist_ok=True)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def sync_tree(folder: Path) -> None:
    """Make the names of every file under `folder` survive a power cut (the files are synced already)."""
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        sync_directory(directory)
