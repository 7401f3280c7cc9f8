"""The `faiss` vector store: one model's index as files, replaced atomically; served from a private copy.

<dir>/index.faiss       the FAISS index (cxr.faiss_index types), ids 0..n-1
<dir>/table/            per-image metadata as memory-mapped columns (cxr.image_table)
<dir>/vectors.f16.npy   with `rerank`: the full vectors (float16) to re-score a compressed index's candidates
<dir>/manifest.json     model, export checksum, dim, count, index type, created, and the size and
                        SHA-256 of every file above, verified before any is read
<dir>/skipped.csv       inputs that could not be read, with the reason

`load` copies the listed files into a folder only this process can open (cxr.private_copy), checks
the copy against the manifest and memory-maps the copy: truncating or rewriting a file in <dir>
afterwards changes nothing that is served (a mapped file cut short kills its reader with SIGBUS).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import faiss
import numpy as np

from cxr import faiss_index, private_copy
from cxr.files import replace_directory
from cxr.image_table import ImageTable, TableWriter, population
from cxr.vector_store import (
    ID_KEY,
    Filter,
    Hits,
    IndexCorruptError,
    IndexMissingError,
    IndexUnreadableError,
    VectorStore,
    check_model,
    id_key_for,
    top_hits,
)

INDEX_FILE = "index.faiss"
TABLE_DIR = "table"
VECTORS_FILE = "vectors.f16.npy"
MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.csv"
CHUNK_BYTES = 1 << 20
RERANK_FACTOR = 4  # a compressed index proposes 4 x k candidates; the full vectors pick the k best
FILTER_CACHE = 256  # filter combinations whose bitmaps are kept
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours
# Searches of indexes up to this many floats (800 x 256-d: 0.2M) run where they are asked: a hand-off
# to the search thread cost more (~150 us p50, 1-2 ms p95 on 2 busy cores) than the scan itself.
INLINE_SEARCH_FLOATS = 1 << 20


def file_checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _checksummed(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST_FILE, SKIPPED_FILE))


class IndexWriter:
    """Builds an index folder in a staging directory, vectors and rows added in chunks, and swaps it
    in place of `directory` on `finish`; nothing replaces the old index before that."""

    def __init__(self, directory: Path, dim: int, count: int, index_type: str, manifest: dict,
                 rerank: bool = False):
        self.directory = directory
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-staging-", dir=directory.parent))
        self.index = faiss_index.empty_index(index_type, dim, count)
        self.manifest = dict(manifest, dim=dim, index_type=index_type, rerank=rerank,
                             **{ID_KEY: id_key_for(_previous_manifest(directory))})
        self.table = TableWriter(self.staging / TABLE_DIR)
        self.vectors = (np.lib.format.open_memmap(self.staging / VECTORS_FILE, "w+", np.float16, (count, dim))
                        if rerank else None)

    def __enter__(self) -> IndexWriter:
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
        manifest = dict(self.manifest, count=self.table.count, skipped=len(skipped),
                        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        manifest["files"] = {name: file_checksum(self.staging / name) for name in _checksummed(self.staging)}
        (self.staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        replace_directory(self.staging, self.directory)
        return manifest


def write(directory: Path, vectors: np.ndarray, metadata: list[dict], manifest: dict,
          skipped: list[tuple[str, str]], index_type: str, use_gpu: bool = False, rerank: bool = False) -> dict:
    """Write a complete index of vectors held in memory (what `cxr index build` has at its end)."""
    assert vectors.shape[0] == len(metadata), (vectors.shape, len(metadata))
    dim = int(vectors.shape[1]) if len(vectors) else int(manifest["dim"])
    with IndexWriter(directory, dim, len(vectors), index_type, manifest, rerank) as writer:
        writer.index = faiss_index.make_index(vectors, index_type, use_gpu)
        writer.table.append(metadata)
        if writer.vectors is not None:
            writer.vectors[:] = vectors
        faiss.write_index(writer.index, str(writer.staging / INDEX_FILE))
        return writer._seal(skipped)


def write_skipped(path: Path, skipped) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)


def _previous_manifest(directory: Path) -> dict | None:
    try:
        return read_manifest(directory)
    except IndexCorruptError:
        return None


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


def _check_files(copy: Path, manifest: dict, directory: Path) -> None:
    """The copy's files against the manifest; messages name the originals, which the operator can see."""
    for name, expected in manifest["files"].items():
        try:
            actual = file_checksum(copy / name)
        except OSError as exc:
            raise IndexCorruptError(f"{directory / name} cannot be read ({exc.strerror or type(exc).__name__}); "
                                    "rebuild the index") from exc
        if actual != expected:
            raise IndexCorruptError(f"{directory / name} is {actual['bytes']} bytes with sha256 "
                                    f"{actual['sha256'][:12]}…; the manifest says {expected.get('bytes')} bytes, "
                                    f"{str(expected.get('sha256'))[:12]}…: damaged or swapped, rebuild the index")


def load(directory: Path, model: str | None = None, dim: int | None = None, export_sha256: str | None = None,
         use_gpu: bool = False, copy_dir: Path | None = None) -> FaissStore:
    """Open an index, refusing one built by another model, dimension or export, or whose files do
    not match the checksums in its manifest. Its files are copied into a private folder (in
    `copy_dir`, else beside `directory`, else the temp dir), checked and memory-mapped there."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise IndexMissingError(f"no index in {directory}: build one with "
                                f"`cxr index build --model {model or '<model>'} --output-dir {directory} ...`")
    check_model(str(directory), manifest, model, dim, export_sha256)
    try:
        with private_copy.copied(directory, listed_files(directory, manifest), copy_dir) as copy:
            _check_files(copy, manifest, directory)
            index, table, vectors = _map(copy, manifest, directory)
    except private_copy.NoRoomError as exc:
        raise IndexUnreadableError(f"{exc}; it is tried again when the index changes or the gateway restarts") \
            from exc
    except OSError as exc:
        raise _copy_failed(directory, exc) from exc
    if not index.ntotal == table.count == manifest.get("count"):
        raise IndexCorruptError(f"{directory}: {index.ntotal} vectors but {table.count} metadata rows; rebuild it")
    return FaissStore(directory, manifest, index, table, vectors, use_gpu)


def _copy_failed(directory: Path, exc: OSError) -> IndexCorruptError | IndexUnreadableError:
    if isinstance(exc, FileNotFoundError) and str(exc.filename).startswith(str(directory)):
        return IndexCorruptError(f"{exc.filename} is listed in the manifest but missing; rebuild the index")
    reason = exc.strerror or type(exc).__name__
    return IndexUnreadableError(f"index {directory} cannot be copied for serving ({reason}): the gateway's user "
                                "must be able to read it and to write where index_copy_dir says")


def _map(copy: Path, manifest: dict, directory: Path):
    """The index, its table and its re-rank vectors, memory-mapped from the private copy."""
    try:
        index = faiss.read_index(str(copy / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        table = ImageTable(copy / TABLE_DIR)
        vectors = np.load(copy / VECTORS_FILE, mmap_mode="r") if manifest.get("rerank") else None
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise IndexCorruptError(f"index {directory} cannot be read ({type(exc).__name__}); rebuild it") from exc
    return index, table, vectors


@contextlib.contextmanager
def _one_thread(small: bool):
    """A small search on this thread without OpenMP: its second thread would wait for a core that
    Triton or the gateway's other threads hold (measured: 2.1 ms mean per gateway query for 800
    vectors, against tens of microseconds alone). OpenMP keeps the count per thread; it is put back."""
    if not small:
        yield
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


class FaissStore(VectorStore):
    def __init__(self, directory: Path, manifest: dict, index: faiss.Index, table: ImageTable,
                 vectors: np.ndarray | None = None, use_gpu: bool = False):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.table = table
        self.vectors = vectors  # full vectors for re-ranking, memory-mapped
        self._flat = isinstance(index, faiss.IndexFlat)
        self.on_gpu = use_gpu and faiss_index.gpu_available()
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        self._filters: OrderedDict[Filter, tuple[np.ndarray | None, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @property
    def projections(self) -> list[str]:
        return sorted(self.table.projection_names)

    @property
    def labels(self) -> list[str]:
        return sorted(self.table.label_names)

    @property
    def inline_search(self) -> bool:
        """An exact scan of at most INLINE_SEARCH_FLOATS (4 MB) takes tens of microseconds."""
        return not self.on_gpu and self.index.ntotal * self.index.d <= INLINE_SEARCH_FLOATS

    def check_filter(self, flt: Filter) -> None:
        self.table.check(flt.projections, flt.labels)

    def rows(self, ids) -> list[dict]:
        return self.table.rows(ids)

    def study(self, study_uid: str) -> list[dict]:
        return self.table.study(study_uid)

    def image(self, image_id: str) -> dict | None:
        return self.table.image(image_id)

    def search(self, queries: np.ndarray, k: int, flt: Filter = Filter()) -> list[Hits]:
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.index.d)
        bitmap, allowed = self._bitmap(flt)
        k = min(k, allowed)
        if k == 0:
            return [[] for _ in queries]
        if self.on_gpu:
            return self._search_gpu(queries, k, bitmap)
        fetch = min(k * RERANK_FACTOR, allowed) if self.vectors is not None else k
        selector = None if bitmap is None else faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bitmap))
        # An unfiltered flat search needs no parameters: building them costs ~0.3 ms after an idle spell.
        params = None if selector is None and self._flat else faiss_index.search_parameters(self.index, selector)
        with _one_thread(self.inline_search):
            scores, ids = self.index.search(queries, fetch, params=params)
        if bitmap is not None:
            self._widen_short(queries, fetch, selector, scores, ids)
        if self.vectors is not None:
            scores, ids = self._rerank(queries, ids, k)
        return top_hits(scores[:, :k], ids[:, :k])

    def _bitmap(self, flt: Filter) -> tuple[np.ndarray | None, int]:
        """The filter's bitmap and how many rows pass it, kept for the most recent filters."""
        with self._lock:
            if flt in self._filters:
                self._filters.move_to_end(flt)
                return self._filters[flt]
        bitmap = self.table.bitmap(flt.projections, flt.labels) if flt else None
        entry = (bitmap, population(bitmap, self.count))
        with self._lock:
            self._filters[flt] = entry
            if len(self._filters) > FILTER_CACHE:
                self._filters.popitem(last=False)
        return entry

    def _widen_short(self, queries, fetch, selector, scores, ids) -> None:
        """An IVF index searches only nprobe lists; a narrow filter can leave fewer than k of its images
        there. Those queries are searched again over every list, so a filter never hides a match."""
        ivf = faiss_index.ivf_of(self.index)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if ivf is None or not len(short):
            return
        params = faiss_index.search_parameters(self.index, selector, nprobe=ivf.nlist)
        scores[short], ids[short] = self.index.search(queries[short], fetch, params=params)

    def _rerank(self, queries, candidates, k) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, (query, found) in enumerate(zip(queries, candidates)):
            found = np.sort(found[found >= 0])  # sorted: the memory map is read in file order
            exact = np.asarray(self.vectors[found], np.float32) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[row, :len(best)], ids[row, :len(best)] = exact[best], found[best]
        return scores, ids

    def _search_gpu(self, queries, k, bitmap) -> list[Hits]:
        fetch = min(GPU_MAX_K, self.count if bitmap is not None else k)
        scores, ids = self.index.search(queries, fetch)
        if bitmap is not None:
            bits = np.unpackbits(bitmap, bitorder="little", count=self.count).astype(bool)
            passes = np.where(ids >= 0, bits[np.clip(ids, 0, None)], False)
            ids = np.where(passes, ids, -1)
        return [hits[:k] for hits in top_hits(scores, ids)]


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class FaissBackend:
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
               rerank: bool = False) -> IndexWriter:
        """Vectors and rows added in chunks (train on a sample first), swapped in on finish."""
        return IndexWriter(self.path(model), dim, count, index_type, manifest, rerank)

    def write(self, model: str, vectors: np.ndarray, metadata: list[dict], manifest: dict,
              skipped: list[tuple[str, str]], index_type: str, rerank: bool = False) -> dict:
        return write(self.path(model), vectors, metadata, manifest, skipped, index_type, self.use_gpu, rerank)
