"""The `faiss` backend: each model's index as a folder of files under index_dir (cxr.store.faiss_files)."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr.files import recover, write_durably
from cxr.store import faiss_compaction
from cxr.store.builds import CALIBRATION_KEY, check_change, check_model
from cxr.store.errors import IndexCorruptError, IndexMissingError, IndexReadOnlyError
from cxr.store.faiss_changes import Generation, base_id, commit, read_generation, write_deletion, write_segment, writing
from cxr.store.faiss_delta import Delta
from cxr.store.faiss_files import MANIFEST_FILE, TABLE_DIR, listed_files, read_manifest
from cxr.store.faiss_store import FaissStore, load
from cxr.store.faiss_writer import FaissWriter, write
from cxr.store.image_table import ImageTable
from cxr.store.interface import Change, Committed, StoreBackend


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


@contextlib.contextmanager
def _written(directory: Path) -> Iterator[None]:
    """A write refused by the file system (a read-only mount, another owner) said as what to do, not as an
    OSError the gateway could only answer INTERNAL."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise IndexReadOnlyError(f"the index folder {directory} cannot be written by this process ({exc.strerror}); "
                                 "commits are written beside the index: delete with `cxr index delete` on the host "
                                 "that writes the index folder, or mount it writable here") from exc


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
        self._states: dict[Path, Delta] = {}  # each index as this process's last commit left it

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
            recover(directory)  # a swap that a crash interrupted
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


    def apply(self, model: str, change: Change) -> Committed:
        """One commit to the model's index, written beside it (cxr.store.faiss_changes) under the writers'
        lock; durable when this returns."""
        directory = self.path(model)
        with _written(directory), writing(directory):
            recover(directory)
            manifest = self._manifest(model, directory)
            check_model(str(directory), manifest, model, None, None)
            check_change(str(directory), manifest, change)
            state, generation = self._state(directory, manifest)
            plan = state.plan(change)
            if not plan.removed and not plan.rows:
                return Committed(generation.number)
            number = generation.number + 1
            deletions = (write_deletion(directory, number, plan.removed),) if plan.removed else ()
            segments = (write_segment(directory, number, plan.vectors, plan.rows),) if plan.rows else ()
            generation = replace(generation, number=number, segments=generation.segments + segments,
                                 deletions=generation.deletions + deletions, added=generation.added + len(plan.rows),
                                 deleted=generation.deleted + len(plan.removed))
            commit(directory, generation)
        return Committed(number, len(plan.rows) - len(plan.replaced), len(plan.replaced), len(plan.deleted))

    def set_calibration(self, model: str, calibration: dict | None) -> None:
        """Written into the manifest, whole or not at all, under the writers' lock: a gateway sees the manifest
        change and opens the build again; compaction carries it into the folded build."""
        directory = self.path(model)
        with _written(directory), writing(directory):
            recover(directory)
            manifest = {name: value for name, value in self._manifest(model, directory).items()
                        if name != CALIBRATION_KEY}
            if calibration is not None:
                manifest[CALIBRATION_KEY] = calibration
            write_durably(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())

    def _manifest(self, model: str, directory: Path) -> dict:
        manifest = read_manifest(directory)
        if manifest is None:
            raise IndexMissingError(f"no index of {model} in {directory} to change: build one first with "
                                    f"`cxr index build --model {model} --output-dir {directory} ...`")
        return manifest

    def _state(self, directory: Path, manifest: dict) -> tuple[Delta, Generation]:
        """The index as its committed generation left it: kept between commits, so a commit reads only
        the previous commit's files, not the whole change log."""
        base = base_id(manifest)
        generation = read_generation(directory)
        if generation is None or generation.base != base:
            generation = Generation(base)  # none yet, or left by a build that a full build replaced
        state = self._states.get(directory)
        if state is None or state.base != base or state.number > generation.number:
            state = Delta.of(ImageTable(directory / TABLE_DIR), base, int(manifest["dim"]))
        state = state.extended(directory, generation) or state
        self._states[directory] = state
        return state, generation

    def pending(self, model: str) -> int:
        directory = self.path(model)
        manifest = read_manifest(directory)
        generation = read_generation(directory)
        if manifest is None or generation is None or generation.base != base_id(manifest):
            return 0
        return generation.pending

    def compact(self, model: str) -> dict | None:
        return faiss_compaction.compact(self.path(model))
