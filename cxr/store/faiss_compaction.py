"""Folding a FAISS index's commits (cxr.store.faiss_changes) into a new build, off the serving path.

The commits up to the generation committed when compaction starts are folded: the build's rows deleted
since are dropped, the rows added since are appended, ids renumbered 0..n-1. An IVF index keeps its
training: its inverted lists are copied list by list without the deleted entries (no vector is assigned
or encoded again, so a million images take seconds); other index types are rebuilt from their vectors,
read back in chunks. Memory: the new index (about the size of the build's file) plus one chunk.

Writers go on committing meanwhile. At the end, under the writers' lock, the commits made since are
carried over into the new build's changes folder, and the new folder replaces the old in one step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from cxr.files import recover, replace_directory
from cxr.private_copy import owned_prefix, remove_leftovers
from cxr.store import faiss_index
from cxr.store.builds import CALIBRATION_KEY, INDEX_FORMAT
from cxr.store.errors import IndexMissingError
from cxr.store.faiss_changes import CHANGES_DIR, Generation, base_id, commit, read_generation, writing
from cxr.store.faiss_delta import Delta
from cxr.store.faiss_files import (
    INDEX_FILE,
    MANIFEST_FILE,
    SKIPPED_FILE,
    TABLE_DIR,
    VECTORS_FILE,
    checksummed,
    file_checksum,
    read_manifest,
)
from cxr.store.image_table import ImageTable, TableWriter

CHUNK_ROWS = 65_536
LINEAGE_KEPT = 4


def compact(directory: Path) -> dict | None:
    """Fold the committed generation into a new build of the index in `directory` and swap it in;
    None when there is nothing to fold (or a full build replaced the index meanwhile)."""
    with writing(directory):
        recover(directory)
        manifest = read_manifest(directory)
        if manifest is None:
            raise IndexMissingError(f"no index in {directory} to compact")
        generation = read_generation(directory)
    if generation is None or generation.base != base_id(manifest) or not generation.files():
        return None
    started = time.monotonic()
    table = ImageTable(directory / TABLE_DIR)
    delta = Delta.of(table, generation.base, int(manifest["dim"])).extended(directory, generation)
    prefix = f".{directory.name}-compacting-"
    remove_leftovers(directory.parent, prefix)  # of compactions killed before they finished
    staging = Path(tempfile.mkdtemp(prefix=owned_prefix(prefix), dir=directory.parent))
    try:
        folded = _write_folded(directory, staging, manifest, delta)
        folded["compaction_s"] = round(time.monotonic() - started, 3)
        return folded if _swap(directory, staging, manifest, generation, folded) else None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_folded(directory: Path, staging: Path, manifest: dict, delta: Delta) -> dict:
    live = np.ones(delta.base_count, bool)
    live[np.fromiter(delta.dead_base, np.int64, len(delta.dead_base))] = False
    index = faiss.read_index(str(directory / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    folded = _folded_index(index, live, manifest)
    folded.add(np.ascontiguousarray(delta.vectors[delta.alive]))
    faiss.write_index(folded, str(staging / INDEX_FILE))
    count = int(folded.ntotal)
    del folded, index
    _write_table(staging / TABLE_DIR, delta, live)
    if manifest.get("rerank"):
        _write_rerank_vectors(directory / VECTORS_FILE, staging / VECTORS_FILE, delta, live, count)
    shutil.copyfile(directory / SKIPPED_FILE, staging / SKIPPED_FILE)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result = dict(manifest, format=INDEX_FORMAT, count=count, base_id=secrets.token_hex(8), compacted=now,
                  compacted_from=delta.base, folded=delta.number)
    result["files"] = {name: file_checksum(staging / name) for name in checksummed(staging)}
    return result


def _folded_index(index: faiss.Index, live: np.ndarray, manifest: dict) -> faiss.Index:
    """The build's index without its deleted rows, ids renumbered in order."""
    ivf = faiss_index.ivf_of(index)
    if ivf is not None:
        return _folded_ivf(index, ivf, live)
    folded = faiss_index.empty_index(manifest["index_type"], index.d, int(live.sum()))
    for start in range(0, index.ntotal, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, index.ntotal)
        folded.add(index.reconstruct_n(start, stop - start)[live[start:stop]])
    return folded


def _folded_ivf(index: faiss.Index, ivf, live: np.ndarray) -> faiss.Index:
    """The trained index with each inverted list copied without the deleted entries."""
    folded = _emptied_copy(index, ivf)
    target = faiss_index.ivf_of(folded)
    renumbered = (np.cumsum(live) - 1).astype(np.int64)
    lists = ivf.invlists
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).reshape(size, lists.code_size)
        keep = live[ids]
        if keep.any():
            kept_ids = np.ascontiguousarray(renumbered[ids[keep]])
            kept_codes = np.ascontiguousarray(codes[keep])
            target.invlists.add_entries(number, len(kept_ids), faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes))
    target.ntotal = folded.ntotal = int(live.sum())
    return folded


def _emptied_copy(index: faiss.Index, ivf) -> faiss.Index:
    """A copy of a trained IVF index (quantizer, encoder, transforms) with no entries: the lists are set
    aside while it is cloned, then put back."""
    lists, total = ivf.invlists, ivf.ntotal
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    empty.this.disown()  # the index deletes it when the lists are put back
    ivf.own_invlists = False
    ivf.replace_invlists(empty, True)
    ivf.ntotal = index.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.replace_invlists(lists, True)
        ivf.ntotal = index.ntotal = total


def _write_table(folder: Path, delta: Delta, live: np.ndarray) -> None:
    writer = TableWriter(folder)
    kept = np.flatnonzero(live)
    for start in range(0, len(kept), CHUNK_ROWS):
        writer.append(delta.table.rows(kept[start:start + CHUNK_ROWS]))
    writer.append([delta.rows[p] for p in np.flatnonzero(delta.alive)])
    writer.close()


def _write_rerank_vectors(source: Path, target: Path, delta: Delta, live: np.ndarray, count: int) -> None:
    old = np.load(source, mmap_mode="r")
    new = np.lib.format.open_memmap(target, "w+", np.float16, (count, old.shape[1]))
    kept, done = np.flatnonzero(live), 0
    for start in range(0, len(kept), CHUNK_ROWS):
        chunk = old[kept[start:start + CHUNK_ROWS]]
        new[done:done + len(chunk)] = chunk
        done += len(chunk)
    new[done:] = delta.vectors[delta.alive].astype(np.float16)
    new.flush()


def _swap(directory: Path, staging: Path, manifest: dict, folded_at: Generation, folded: dict) -> bool:
    """Under the writers' lock: carry the commits made since `folded_at` over, then swap the folders.
    False when a full build replaced the index meanwhile (its build wins; this one is dropped)."""
    with writing(directory):
        current_manifest = read_manifest(directory)
        current = read_generation(directory)
        if current_manifest is None or base_id(current_manifest) != folded_at.base or current is None:
            return False
        carried = current.after(folded_at.number)
        carried = Generation(folded["base_id"], carried.number, carried.segments, carried.deletions, carried.added,
                             carried.deleted, (folded_at.base, *current.lineage)[:LINEAGE_KEPT], folded_at.number)
        folded.pop(CALIBRATION_KEY, None)
        if CALIBRATION_KEY in current_manifest:  # as it is now: a calibration set meanwhile is kept
            folded[CALIBRATION_KEY] = current_manifest[CALIBRATION_KEY]
        (staging / CHANGES_DIR).mkdir()
        for part in carried.files():
            _link(directory / CHANGES_DIR / part.name, staging / CHANGES_DIR / part.name)
        commit(staging, carried)
        (staging / MANIFEST_FILE).write_text(json.dumps(folded, indent=2))
        replace_directory(staging, directory)
    return True


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)
