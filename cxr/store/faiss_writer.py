"""Writes the `faiss` backend's folder (cxr.store.faiss_files) in a staging directory and swaps it in
whole: nothing replaces the index in service before the new one is complete."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import tempfile
from pathlib import Path

import faiss
import numpy as np

from cxr.files import replace_directory
from cxr.private_copy import owned_prefix, remove_leftovers
from cxr.store import faiss_index
from cxr.store.builds import ID_KEY, INDEX_FORMAT, id_key_for
from cxr.store.errors import IndexCorruptError
from cxr.store.faiss_changes import writing
from cxr.store.faiss_files import (
    INDEX_FILE,
    MANIFEST_FILE,
    SKIPPED_FILE,
    TABLE_DIR,
    VECTORS_FILE,
    checksummed,
    file_checksum,
    read_manifest,
    write_skipped,
)
from cxr.store.image_table import TableWriter
from cxr.store.interface import StoreWriter


class FaissWriter(StoreWriter):
    """Builds an index folder in a staging directory, vectors and rows added in chunks, and swaps it
    in place of `directory` on `finish`; nothing replaces the old index before that."""

    def __init__(self, directory: Path, dim: int, count: int, index_type: str, manifest: dict,
                 rerank: bool = False):
        self.directory = directory
        directory.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{directory.name}-staging-"
        remove_leftovers(directory.parent, prefix)  # of builds killed before they finished
        self.staging = Path(tempfile.mkdtemp(prefix=owned_prefix(prefix), dir=directory.parent))
        self.index = faiss_index.empty_index(index_type, dim, count)
        self.manifest = dict(manifest, dim=dim, index_type=index_type, rerank=rerank,
                             **{ID_KEY: id_key_for(_previous_manifest(directory))})
        self.table = TableWriter(self.staging / TABLE_DIR)
        self.vectors = (np.lib.format.open_memmap(self.staging / VECTORS_FILE, "w+", np.float16, (count, dim))
                        if rerank else None)

    def __enter__(self) -> FaissWriter:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def training_size(self) -> int:
        """How many vectors `train` wants before the first `add` (0: none)."""
        return faiss_index.training_size(self.index)

    def train(self, sample: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(sample, np.float32))

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        assert len(vectors) == len(rows), (len(vectors), len(rows))
        if self.vectors is not None:
            self.vectors[self.table.count:self.table.count + len(vectors)] = vectors
        self.index.add(np.ascontiguousarray(vectors, np.float32))
        self.table.append(rows)

    def finish(self, skipped: list[tuple[str, str]] = ()) -> dict:
        faiss.write_index(self.index, str(self.staging / INDEX_FILE))
        return self._seal(skipped)

    def _seal(self, skipped) -> dict:
        self.table.close()
        if self.vectors is not None:
            self.vectors.flush()
            del self.vectors
        write_skipped(self.staging / SKIPPED_FILE, skipped)
        manifest = dict(self.manifest, format=INDEX_FORMAT, count=self.table.count, skipped=len(skipped),
                        base_id=secrets.token_hex(8),
                        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        manifest["files"] = {name: file_checksum(self.staging / name) for name in checksummed(self.staging)}
        (self.staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        with writing(self.directory):  # a commit to the old build lands before the swap, none after it
            replace_directory(self.staging, self.directory)
        return manifest


def write(directory: Path, vectors: np.ndarray, metadata: list[dict], manifest: dict,
          skipped: list[tuple[str, str]], index_type: str, use_gpu: bool = False, rerank: bool = False) -> dict:
    """Write a complete index of vectors held in memory (what `cxr index build` has at its end)."""
    assert vectors.shape[0] == len(metadata), (vectors.shape, len(metadata))
    dim = int(vectors.shape[1]) if len(vectors) else int(manifest["dim"])
    with FaissWriter(directory, dim, len(vectors), index_type, manifest, rerank) as writer:
        writer.index = faiss_index.make_index(vectors, index_type, use_gpu)
        writer.table.append(metadata)
        if writer.vectors is not None:
            writer.vectors[:] = vectors
        faiss.write_index(writer.index, str(writer.staging / INDEX_FILE))
        return writer._seal(skipped)


def _previous_manifest(directory: Path) -> dict | None:
    try:
        return read_manifest(directory)
    except IndexCorruptError:
        return None
