"""The `faiss` backend: each model's index as a folder of files under index_dir (cxr.store.faiss_files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.store.errors import IndexCorruptError
from cxr.store.faiss_files import MANIFEST_FILE, listed_files, read_manifest
from cxr.store.faiss_store import FaissStore, load
from cxr.store.faiss_writer import FaissWriter, write
from cxr.store.interface import StoreBackend


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class FaissBackend(StoreBackend):
    """Where each model's FAISS index lives: <index_dir>/<model>/, or one given folder (`folder`)."""

    name = "faiss"

    def __init__(self, index_dir: Path, use_gpu: bool = False, folder: Path | None = None,
                 copy_dir: Path | None = None):
        self.index_dir = index_dir
        self.use_gpu = use_gpu
        self.folder = folder
        self.copy_dir = copy_dir  # where served copies go (cxr.private_copy); None: beside the index
        self._listings: dict[Path, tuple[tuple, list[str]]] = {}  # manifest identity -> the files it lists

    def path(self, model: str) -> Path:
        return self.folder or self.index_dir / model

    def where(self, model: str) -> str:
        return str(self.path(model))

    def version(self, model: str) -> tuple | None:
        """The size, modification and change times and inode of the manifest and of every file it lists:
        a folder swapped in is seen even with old times, and so is a file truncated, rewritten or
        restored in place (one stat per file per look)."""
        directory = self.path(model)
        manifest = _identity(directory / MANIFEST_FILE)
        if manifest is None:
            return None
        return (manifest, *(_identity(directory / name) for name in self._listing(directory, manifest)))

    def _listing(self, directory: Path, manifest: tuple) -> list[str]:
        """The files the manifest lists, read again only when the manifest changes (none if unreadable)."""
        known = self._listings.get(directory)
        if known is None or known[0] != manifest:
            try:
                names = listed_files(directory, read_manifest(directory) or {})
            except IndexCorruptError:
                names = []  # loading it will say why
            known = self._listings[directory] = (manifest, names)
        return known[1]

    def open(self, model: str, dim: int | None = None, export_sha256: str | None = None) -> FaissStore:
        return load(self.path(model), model=model, dim=dim, export_sha256=export_sha256, use_gpu=self.use_gpu,
                    copy_dir=self.copy_dir)

    def writer(self, model: str, dim: int, count: int, index_type: str, manifest: dict,
               rerank: bool = False) -> FaissWriter:
        """Vectors and rows added in chunks (train on a sample first), swapped in on finish."""
        return FaissWriter(self.path(model), dim, count, index_type, manifest, rerank)

    def write(self, model: str, vectors: np.ndarray, metadata: list[dict], manifest: dict,
              skipped: list[tuple[str, str]], index_type: str, rerank: bool = False) -> dict:
        return write(self.path(model), vectors, metadata, manifest, skipped, index_type, self.use_gpu, rerank)

    def apply(self, model: str, change):
        raise NotImplementedError("being written: issue 20")

    def pending(self, model: str) -> int:
        raise NotImplementedError("being written: issue 20")

    def compact(self, model: str):
        raise NotImplementedError("being written: issue 20")
