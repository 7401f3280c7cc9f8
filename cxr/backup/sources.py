"""Consistent copies of what writers change while a backup runs: a FAISS living index, a PACS build's cache
and the audit log. Each returns {relative path: checksum} of the files it wrote under `target`.

A FAISS index (cxr.store.faiss_files, faiss_changes) is a build, whose files nothing rewrites (a new build
or a compaction swaps in a whole new folder), and the commits made since, which the generation file names.
The build's files are copied without a lock, each checked against the build's manifest as it is copied;
then, under the writers' lock (commits wait for it: a few milliseconds per MB of commits), the manifest is
checked to be still the one read before (no swap meanwhile) and the committed generation and the files it
lists are copied. The copy is the index as it was at that moment. A swap during the copy makes a file
differ from the manifest, or the manifest change: the copy starts again, and after LOCKLESS_TRIES it is
made under the lock from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from cxr.audit_files import key_file, rotated
from cxr.backup.copying import Changed, remove, stream, write_bytes
from cxr.backup.manifest import BackupError
from cxr.store.errors import IndexCorruptError
from cxr.store.faiss_changes import GENERATION_FILE, Generation, base_id, writing
from cxr.store.faiss_files import CHANGES_DIR, MANIFEST_FILE, SKIPPED_FILE, listed_files

LOCKLESS_TRIES = 3
CACHE_TRIES = 3
AUDIT_TRIES = 20
# Files of a cache that writers append lines to (indexing.chunk_cache's skipped.jsonl, the PACS cache's
# listed.jsonl, indexing.pacs_reports' reports_read.txt): copied up to their last whole line. The others
# are written aside and renamed whole; WRITING_PREFIX marks one not yet renamed (indexing.chunk_cache).
APPENDED_SUFFIXES = (".jsonl", ".txt")
WRITING_PREFIX = "writing-"


def faiss_index(source: Path, target: Path) -> tuple[dict[str, dict], dict]:
    """A consistent copy of the index folder `source`; (files, details: build id, count, generation)."""
    for _ in range(LOCKLESS_TRIES):
        try:
            return _index_copy(source, target, locked=False)
        except Changed:
            remove(target)  # swapped while copied: once more
    with writing(source):
        try:
            return _index_copy(source, target, locked=True)
        except Changed as exc:
            raise IndexCorruptError(f"{exc}: does not match the checksum its index's manifest gives it, with no "
                                    f"writer at work: the index in {source} is damaged; rebuild it") from exc


def _index_copy(source: Path, target: Path, locked: bool) -> tuple[dict[str, dict], dict]:
    try:
        manifest_bytes = (source / MANIFEST_FILE).read_bytes()
    except FileNotFoundError as exc:  # between the two renames of a swap without renameat2
        raise Changed(str(source / MANIFEST_FILE)) from exc
    manifest = json.loads(manifest_bytes)
    files = {name: _copy_or_changed(source / name, target / name, manifest["files"][name])
             for name in sorted(listed_files(source, manifest))}
    if (source / SKIPPED_FILE).is_file():
        files[SKIPPED_FILE] = _copy_or_changed(source / SKIPPED_FILE, target / SKIPPED_FILE)
    with contextlib.nullcontext() if locked else writing(source):
        if (source / MANIFEST_FILE).read_bytes() != manifest_bytes:
            raise Changed(str(source / MANIFEST_FILE))
        generation = _committed(source, target, files)
    files[MANIFEST_FILE] = write_bytes(target / MANIFEST_FILE, manifest_bytes)
    details = {"base_id": base_id(manifest), "count": manifest.get("count"), "dim": manifest.get("dim"),
               "format": manifest.get("format", 1), "generation": generation.number if generation else 0,
               "pending": generation.pending if generation else 0}
    return files, details


def _committed(source: Path, target: Path, files: dict[str, dict]) -> Generation | None:
    """The committed generation and the files it lists, copied (under the writers' lock)."""
    path = source / CHANGES_DIR / GENERATION_FILE
    try:
        generation_bytes = path.read_bytes()
    except FileNotFoundError:
        return None  # no commit since the build
    generation = Generation.from_json(generation_bytes.decode())
    for part in generation.files():
        name = f"{CHANGES_DIR}/{part.name}"
        try:
            files[name] = stream(source / name, target / name, {"bytes": part.bytes, "sha256": part.sha256})
        except (Changed, FileNotFoundError) as exc:
            raise IndexCorruptError(f"{source / name} is listed in {GENERATION_FILE} but missing or damaged: "
                                    f"rebuild the index in {source}") from exc
    files[f"{CHANGES_DIR}/{GENERATION_FILE}"] = write_bytes(target / CHANGES_DIR / GENERATION_FILE, generation_bytes)
    return generation


def _copy_or_changed(source: Path, target: Path, expected: dict | None = None) -> dict:
    try:
        return stream(source, target, expected)
    except FileNotFoundError as exc:  # the folder was swapped away
        raise Changed(str(source)) from exc


def pacs_cache(source: Path, target: Path) -> dict[str, dict]:
    """A copy of a PACS build's cache (indexing.dicomweb_build) while a follower may write it. Its small
    state files (the follow position) are copied first: a follower restored from the copy starts from a
    position no later than the vectors and listing beside it, and replays a batch rather than skips one."""
    for _ in range(CACHE_TRIES):
        try:
            return {name: stream(source / name, target / name, whole_lines=name.endswith(APPENDED_SUFFIXES))
                    for name in _cache_files(source)}
        except FileNotFoundError:  # merged or renamed away while listed: once more
            remove(target)
    raise BackupError(f"the cache {source} kept changing under the copy ({CACHE_TRIES} tries); stop the "
                      "follower that writes it (`cxr index follow`) and back up again")


def _cache_files(source: Path) -> list[str]:
    names = [str(p.relative_to(source)) for p in source.rglob("*")
             if p.is_file() and not p.name.startswith(WRITING_PREFIX)]
    return sorted(names, key=lambda name: (not name.endswith(".json"), name))


def audit_log(live: Path, target: Path, with_key: bool) -> tuple[dict[str, dict], dict]:
    """The audit log `live` with its rotated files, up to its last whole line, while a gateway appends to
    it and may rotate it; and its key unless `with_key` is False. (files, details: names, lines, key)."""
    files: dict[str, dict] = {}
    for _ in range(AUDIT_TRIES):
        before = rotated(live)
        files.update({p.name: stream(p, target / p.name) for p in before if p.name not in files})  # never rewritten
        if live.is_file():
            (target / live.name).unlink(missing_ok=True)
            files[live.name] = stream(live, target / live.name, whole_lines=True)
        if rotated(live) == before:
            break
        # It rotated while copied: the live file copied may be the next one. Once more, with the new rotated
        # files only.
    else:
        raise BackupError(f"the audit log {live} rotated during each of {AUDIT_TRIES} copies: raise "
                          "audit_max_bytes, or back up when it is quieter")
    key = key_file(live)
    key_bytes = key.read_bytes() if key.is_file() else None
    if key_bytes is not None and with_key:
        files[key.name] = write_bytes(target / key.name, key_bytes)
    details = {"live": live.name, "rotated": [p.name for p in before],
               "lines": sum(_lines(target / name) for name in files if name != key.name),
               "key": key.name if key_bytes is not None and with_key else None,
               "key_sha256": hashlib.sha256(key_bytes).hexdigest() if key_bytes is not None else None}
    return files, details


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
