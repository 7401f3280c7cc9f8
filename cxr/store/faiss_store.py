"""The `faiss` store: one model's index searched in the gateway's process, from a private copy.

`load` copies the files the manifest lists (cxr.store.faiss_files) into a folder only this process can
open (cxr.private_copy), checks the copy against the manifest and memory-maps the copy: truncating or
rewriting a file in <dir> afterwards changes nothing that is served (a mapped file cut short kills its
reader with SIGBUS).

Commits made to the build since it was written (cxr.store.faiss_changes) are read from <dir>/changes
into memory, checked against their checksums, and taken in by `refresh` (cxr.store.faiss_delta): the
rows they added are searched exactly beside the build, the rows they deleted are masked out of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from cxr import private_copy
from cxr.store import faiss_index
from cxr.store.builds import check_model
from cxr.store.errors import ImagesNotFoundError, IndexCorruptError, IndexMissingError, IndexUnreadableError
from cxr.store.faiss_changes import CHANGES_DIR, GENERATION_FILE, base_id, read_generation
from cxr.store.faiss_delta import Delta
from cxr.store.faiss_files import INDEX_FILE, TABLE_DIR, VECTORS_FILE, file_checksum, listed_files, read_manifest
from cxr.store.image_table import ImageTable, check_known, population
from cxr.store.interface import STUDY_KEYS, Filter, Hits, StudyIdentity, StudyReport, VectorStore

RERANK_FACTOR = 4  # a compressed index proposes 4 x k candidates; the full vectors pick the k best
FILTER_CACHE = 256  # filter combinations whose bitmaps are kept
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours
# Searches of indexes up to this many floats (800 x 256-d: 0.2M) run where they are asked: a hand-off
# to the search thread cost more (~150 us p50, 1-2 ms p95 on 2 busy cores) than the scan itself.
INLINE_SEARCH_FLOATS = 1 << 20


def top_hits(scores: np.ndarray, ids: np.ndarray) -> list[Hits]:
    """FAISS-style result arrays as hit lists, without the -1 padding of short results."""
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)]


def _merged(first: Hits, second: Hits, k: int) -> Hits:
    return sorted(first + second, key=lambda hit: -hit[1])[:k]


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


@dataclass(frozen=True)
class _View:
    """What one filter lets through in one state of the index: the build's rows (a FAISS bitmap, None for
    all of them, and how many) and the added rows (a mask)."""

    delta: Delta
    bitmap: np.ndarray | None
    allowed: int
    added: np.ndarray
    added_index: faiss.Index | None  # the added rows' vectors, ids their positions


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
    store = FaissStore(directory, manifest, index, table, vectors, use_gpu)
    store.refresh()
    return store


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


def _widen_short(index: faiss.Index, queries, fetch, selector, scores, ids) -> None:
    """An IVF index searches only nprobe lists; a narrow filter can leave fewer than k of its images
    there. Those queries are searched again over every list, so a filter never hides a match."""
    ivf = faiss_index.ivf_of(index)
    short = np.flatnonzero((ids < 0).any(axis=1))
    if ivf is None or not len(short):
        return
    params = faiss_index.search_parameters(index, selector, nprobe=ivf.nlist)
    scores[short], ids[short] = index.search(queries[short], fetch, params=params)


class FaissStore(VectorStore):
    def __init__(self, directory: Path, manifest: dict, index: faiss.Index, table: ImageTable,
                 vectors: np.ndarray | None = None, use_gpu: bool = False):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.table = table
        self.full_vectors = vectors  # full vectors for re-ranking, memory-mapped
        self._cpu_index = index  # read back from by `vectors`, also when searches run on the GPU
        self._ivf_places: np.ndarray | None = None  # an IVF build's (list, offset) per id, made when first read
        self._placing = threading.Lock()  # not self._lock: searches must not wait while the map is made
        self._flat = isinstance(index, faiss.IndexFlat)
        self.on_gpu = use_gpu and faiss_index.gpu_available()
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        self.delta = Delta.of(table, base_id(manifest), index.d)
        self._added_index: faiss.Index | None = None  # of self.delta's added rows
        self._reports: dict[str, dict] = {}  # study -> report fields, for the rows added by commits
        self._reported_labels: frozenset[str] = frozenset()
        self._filters: OrderedDict[Filter, _View] = OrderedDict()
        self._generation = 0  # of the labels and rows: reports and commits change them, and the views kept
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._changes_seen: tuple | None = None  # the generation file taken in

    @property
    def count(self) -> int:
        return self.delta.count

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @property
    def projections(self) -> list[str]:
        return sorted(set(self.table.projection_names) | self.delta.projection_names)

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.table.label_names) | self.delta.label_names | self._reported_labels)

    @property
    def inline_search(self) -> bool:
        """An exact scan of at most INLINE_SEARCH_FLOATS (4 MB) takes tens of microseconds."""
        return not self.on_gpu and self.index.ntotal * self.index.d <= INLINE_SEARCH_FLOATS

    def check_filter(self, flt: Filter) -> None:
        if flt:
            check_known(flt.projections, flt.labels, self.projections, self.labels)

    def rows(self, ids) -> list[dict]:
        ids, base_count = [int(i) for i in ids], self.table.count
        found = dict(zip((i for i in ids if i < base_count), self.table.rows(i for i in ids if i < base_count)))
        added = [i for i in ids if i >= base_count]
        found.update(zip(added, self.delta.added_rows([i - base_count for i in added], self._reports)))
        return [dict(found[i]) for i in ids]

    def study(self, study_uid: str) -> list[dict]:
        delta = self.delta
        ids = [i for i in self.table.matching("study_uid", study_uid) if i not in delta.dead_base]
        ids += [delta.base_count + p for p in delta.by_study.get(study_uid, ()) if delta.alive[p]]
        return self.rows(ids)

    def image(self, image_id: str) -> dict | None:
        found = self._id_of(image_id, self.delta)
        return None if found is None else self.rows([found])[0]

    def _id_of(self, image_id: str, delta: Delta) -> int | None:
        """The id of the image's live row: the last a commit added, else the build's."""
        added = [p for p in delta.by_image.get(image_id, ()) if delta.alive[p]]
        if added:
            return delta.base_count + added[-1]
        return next((i for i in self.table.matching("image_id", image_id) if i not in delta.dead_base), None)

    def vectors(self, image_ids) -> np.ndarray:
        """Rows added by commits and a build that keeps its full vectors (flat, hnsw, ivf, or `rerank`) give
        the vectors as indexed (float16 for `rerank`); sq8, ivfpq and opq builds without them give their
        decoded, approximate vectors."""
        delta = self.delta
        ids = {image_id: self._id_of(image_id, delta) for image_id in image_ids}
        missing = [image_id for image_id, found in ids.items() if found is None]
        if missing:
            raise ImagesNotFoundError(f"{len(missing)} of the images asked for are not in this index", missing)
        found = np.stack([self._vector(ids[image_id], delta) for image_id in image_ids]) if len(image_ids) \
            else np.zeros((0, self.index.d), np.float32)
        return found / np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)

    def _vector(self, i: int, delta: Delta) -> np.ndarray:
        if i >= delta.base_count:
            return np.asarray(delta.vectors[i - delta.base_count], np.float32)
        if self.full_vectors is not None:
            return np.asarray(self.full_vectors[i], np.float32)
        ivf = faiss_index.ivf_of(self._cpu_index)
        if ivf is None:  # flat, hnsw: their storage holds the vectors
            return self._cpu_index.reconstruct(i)
        place = self._ivf_place(ivf)[i]
        vector = np.zeros(ivf.d, np.float32)
        ivf.reconstruct_from_offset(int(place[0]), int(place[1]), faiss.swig_ptr(vector))
        if isinstance(self._cpu_index, faiss.IndexPreTransform):  # opq: rotate back
            rotated = np.zeros(self._cpu_index.d, np.float32)
            self._cpu_index.reverse_chain(1, faiss.swig_ptr(vector), faiss.swig_ptr(rotated))
            vector = rotated
        return vector

    def _ivf_place(self, ivf) -> np.ndarray:
        """Where each id lies in the inverted lists: [ntotal, 2] (list, offset). Kept here rather than in the
        index's own direct map, which would change the index that searches read from other threads."""
        with self._placing:
            if self._ivf_places is None:
                places = np.full((ivf.ntotal, 2), -1, np.int64)
                lists = ivf.invlists
                for number in range(ivf.nlist):
                    size = lists.list_size(number)
                    if size:
                        pointer = lists.get_ids(number)
                        ids = faiss.rev_swig_ptr(pointer, size).copy()
                        lists.release_ids(number, pointer)
                        places[ids, 0], places[ids, 1] = number, np.arange(size)
                self._ivf_places = places
            return self._ivf_places

    def studies(self) -> Iterator[StudyIdentity]:
        yield from (StudyIdentity(*study) for study in self.table.studies())
        yield from self.added_studies()

    def added_studies(self, after: int = 0) -> Iterator[StudyIdentity]:
        """The studies of the rows commits added (after `after` of them), once per accession number."""
        delta, seen = self.delta, set()
        for position in range(after, len(delta.rows)):
            row = delta.rows[position]
            identity = StudyIdentity(row.get("study_uid", ""), row.get("study_instance_uid", ""),
                                     row.get("accession_number", ""), row.get("patient_id", ""))
            if (identity.study_uid, identity.accession_number) not in seen:
                seen.add((identity.study_uid, identity.accession_number))
                yield identity

    def apply_reports(self, reports: dict[str, StudyReport]) -> None:
        fields = {study: report.fields() for study, report in reports.items()}
        self.table.amend(fields)
        with self._lock:
            self._reports = {**self._reports, **fields}
            self._reported_labels |= {label for f in fields.values() for label in f["labels"]}
            self._generation += 1
            self._filters.clear()

    def refresh(self) -> bool:
        """Take in the generation committed since the last look (one stat when there is none); a damaged
        commit raises once (IndexCorruptError) and the state taken in last keeps serving."""
        with self._refreshing:
            seen = _identity(self.directory / CHANGES_DIR / GENERATION_FILE)
            if seen == self._changes_seen:
                return False
            self._changes_seen = seen
            generation = read_generation(self.directory) if seen else None
            delta = self.delta.extended(self.directory, generation) if generation else None
            if delta is None or delta.number == self.delta.number:
                return False  # nothing new, or commits of another build: the index set loads that build
            added_index = self._extended_index(delta)
            with self._lock:
                self.delta, self._added_index = delta, added_index
                self._generation += 1
                self._filters.clear()
            return True

    def _extended_index(self, delta: Delta) -> faiss.Index:
        """The index of the added rows: the previous one's copy with the new rows added (rows are only
        ever appended to a build's delta). Beside an IVF build, an IVF over the build's own coarse
        quantizer, searched with the same nprobe: a few lists of the added rows, not all of them, per query."""
        done = len(self.delta.rows) if self._added_index is not None else 0
        index = faiss.clone_index(self._added_index) if done else self._empty_added_index()
        index.add(np.ascontiguousarray(delta.vectors[done:]))
        return index

    def _empty_added_index(self) -> faiss.Index:
        ivf = faiss_index.ivf_of(self.index)
        if ivf is None or isinstance(self.index, faiss.IndexPreTransform) or self.on_gpu:
            return faiss.IndexFlatIP(self.index.d)
        quantizer = faiss.clone_index(ivf.quantizer)
        quantizer.this.disown()  # the IVF below owns it
        index = faiss.IndexIVFFlat(quantizer, self.index.d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        index.nprobe = ivf.nprobe
        return index

    def search(self, queries: np.ndarray, k: int, flt: Filter = Filter()) -> list[Hits]:
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.index.d)
        view = self._view(flt)
        found = self._search_base(queries, min(k, view.allowed), view.bitmap, view.allowed)
        if view.added.any():
            found = [_merged(base, added, k) for base, added in zip(found, self._search_added(queries, k, view))]
        return found

    def _search_added(self, queries: np.ndarray, k: int, view: _View) -> list[Hits]:
        """The rows commits added, searched as the build is, filtered by a bitmap of their positions."""
        bitmap = np.packbits(view.added, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(view.added), faiss.swig_ptr(bitmap))
        k = min(k, int(view.added.sum()))
        index = view.added_index
        scores, ids = index.search(queries, k, params=faiss_index.search_parameters(index, selector))
        _widen_short(index, queries, k, selector, scores, ids)
        return top_hits(scores, np.where(ids >= 0, ids + view.delta.base_count, -1))

    def _search_base(self, queries: np.ndarray, k: int, bitmap: np.ndarray | None, allowed: int) -> list[Hits]:
        if k == 0:
            return [[] for _ in queries]
        if self.on_gpu:
            return self._search_gpu(queries, k, bitmap)
        fetch = min(k * RERANK_FACTOR, allowed) if self.full_vectors is not None else k
        selector = None if bitmap is None else faiss.IDSelectorBitmap(self.table.count, faiss.swig_ptr(bitmap))
        # An unfiltered flat search needs no parameters: building them costs ~0.3 ms after an idle spell.
        params = None if selector is None and self._flat else faiss_index.search_parameters(self.index, selector)
        with _one_thread(self.inline_search):
            scores, ids = self.index.search(queries, fetch, params=params)
        if bitmap is not None:
            _widen_short(self.index, queries, fetch, selector, scores, ids)
        if self.full_vectors is not None:
            scores, ids = self._rerank(queries, ids, k)
        return top_hits(scores[:, :k], ids[:, :k])

    def _view(self, flt: Filter) -> _View:
        """What the filter lets through now: the view of its kept part (kept for the most recent filters),
        less the rows of its excluded patients and studies (one query's, not kept)."""
        view = self._kept_view(flt.kept)
        if not flt.excludes:
            return view
        excluded = [row for patient in flt.exclude_patients for row in self.table.matching("patient_id", patient)]
        excluded += [row for study in flt.exclude_studies for key in STUDY_KEYS
                     for row in self.table.matching(key, study)]
        bitmap = view.bitmap
        if excluded:
            bitmap = (np.full((self.table.count + 7) // 8, 0xFF, np.uint8) if bitmap is None else bitmap) \
                & ~self.table.rows_bitmap(excluded)
        return replace(view, bitmap=bitmap, allowed=population(bitmap, self.table.count) if excluded else view.allowed,
                       added=view.delta.passing(flt, self._reports))

    def _kept_view(self, flt: Filter) -> _View:
        with self._lock:
            if flt in self._filters:
                self._filters.move_to_end(flt)
                return self._filters[flt]
            generation, delta, added_index = self._generation, self.delta, self._added_index
        self.check_filter(flt)
        bitmap = self.table.bitmap(flt.projections, flt.labels, known=False) if flt.projections or flt.labels \
            else None
        if flt.dated:
            dated = self.table.date_bitmap(flt.date_from, flt.date_to)
            bitmap = dated if bitmap is None else bitmap & dated
        if delta.dead_bitmap is not None:
            bitmap = ~delta.dead_bitmap if bitmap is None else bitmap & ~delta.dead_bitmap
        allowed = self.table.count - len(delta.dead_base) if bitmap is None or not flt \
            else population(bitmap, self.table.count)
        entry = _View(delta, bitmap, allowed, delta.passing(flt, self._reports), added_index)
        with self._lock:
            if generation != self._generation:
                return entry  # built from the labels before a report changed them: not kept
            self._filters[flt] = entry
            if len(self._filters) > FILTER_CACHE:
                self._filters.popitem(last=False)
        return entry

    def _rerank(self, queries, candidates, k) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, (query, found) in enumerate(zip(queries, candidates)):
            found = np.sort(found[found >= 0])  # sorted: the memory map is read in file order
            exact = np.asarray(self.full_vectors[found], np.float32) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[row, :len(best)], ids[row, :len(best)] = exact[best], found[best]
        return scores, ids

    def _search_gpu(self, queries, k, bitmap) -> list[Hits]:
        fetch = min(GPU_MAX_K, self.table.count if bitmap is not None else k)
        scores, ids = self.index.search(queries, fetch)
        if bitmap is not None:
            bits = np.unpackbits(bitmap, bitorder="little", count=self.table.count).astype(bool)
            passes = np.where(ids >= 0, bits[np.clip(ids, 0, None)], False)
            ids = np.where(passes, ids, -1)
        return [hits[:k] for hits in top_hits(scores, ids)]
