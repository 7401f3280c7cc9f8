"""The vector store's contract: what the gateway and the builders see, whatever the backend.

  StoreBackend   where each model's builds live: says which build is in service, opens it, writes a new one
  VectorStore    one build of one model's index, opened for searching and reading its rows
  StoreWriter    fills a new build in chunks; nothing is served from it before `finish` swaps it in

Two backends implement it: `faiss` (cxr.store.faiss_backend: files under index_dir, searched in the
gateway's process) and `milvus` (cxr.store.milvus: a Milvus Lite file or a Milvus cluster);
cxr.store.factory picks one by the `index_backend` setting. Tests pass fakes of these classes.

Ids are what a store's `search` returns and its `rows` reads: row positions in build order for a build
as written; images added later get ids of their own. An id means nothing outside the store that gave it.

A build is written whole and swapped in at once (StoreWriter). The build in service then changes one
commit at a time (StoreBackend.apply with a Change: images deleted, added or replaced), each commit whole
or not at all, seen by a store in service at its next `refresh`; `compact` folds the commits into the
build off the serving path.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cxr.store.builds import CALIBRATION_KEY, ID_KEY
from cxr.suggestions import Calibration

Hits = list[tuple[int, float]]  # (id, score), best first
# An excluded study matches a row by its study_uid or its StudyInstanceUID: a DICOM query names the latter,
# which is a row's study_uid only where the archive came from a PACS.
STUDY_KEYS = ("study_uid", "study_instance_uid")
OPAQUE_ID_HEX = 24  # 96 bits: no collision among billions of images
log = logging.getLogger("cxr.vector_store")  # the name before the package: log settings may name it


@dataclass(frozen=True)
class Filter:
    """What one query keeps: any of the projections, any of the labels, studies dated within
    [date_from, date_to] (DICOM DA, YYYYMMDD, inclusive; "" no bound; an image without a date is left out
    when a bound is set), and none of the excluded patients (patient_id) or studies (study_uid). Values
    match regardless of case except exclusions, which are identifiers (a study by its study_uid or its
    study_instance_uid); they are kept as sent, so an error can quote them. Excluded patients are patient data: they never show in the filter's repr."""

    projections: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    date_from: str = ""
    date_to: str = ""
    exclude_patients: tuple[str, ...] = field(default=(), repr=False)
    exclude_studies: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, projections=(), labels=(), date_from: str = "", date_to: str = "", exclude_patients=(),
           exclude_studies=()) -> Filter:
        """Order and repeats do not change a filter's meaning, so they do not change its key."""
        return cls(tuple(sorted(set(projections))), tuple(sorted(set(labels))), date_from, date_to,
                   tuple(sorted(set(exclude_patients) - {""})), tuple(sorted(set(exclude_studies) - {""})))

    def __bool__(self) -> bool:
        return bool(self.projections or self.labels or self.dated or self.excludes)

    @property
    def kept(self) -> Filter:
        """The filter without its exclusions: what images pass whoever asks (a store may keep its rows)."""
        return replace(self, exclude_patients=(), exclude_studies=())

    @property
    def excludes(self) -> bool:
        return bool(self.exclude_patients or self.exclude_studies)

    @property
    def dated(self) -> bool:
        return bool(self.date_from or self.date_to)

    def passes_date(self, study_date: str) -> bool:
        """Whether a row's study date is within the bounds (YYYYMMDD compare as text)."""
        if not self.dated:
            return True
        readable = len(study_date) == 8 and study_date.isdigit()
        return readable and (not self.date_from or study_date >= self.date_from) \
            and (not self.date_to or study_date <= self.date_to)

    def excluded(self, row: dict) -> bool:
        """Whether a row is of an excluded patient or study."""
        return (bool(row.get("patient_id")) and row.get("patient_id") in self.exclude_patients) \
            or any(bool(row.get(name)) and row.get(name) in self.exclude_studies for name in STUDY_KEYS)


@dataclass(frozen=True)
class StudyIdentity:
    """How an index knows a study: its rows' study_uid, its DICOM identities, its patient id ("" unknown)."""

    study_uid: str
    study_instance_uid: str = ""
    accession_number: str = ""
    patient_id: str = ""


@dataclass(frozen=True)
class StudyReport:
    """A study's report as its rows show it, replacing what the build stored: the text, the labels read
    from it (derived from the text, not ground truth), its status and time. A cancelled report shows no
    text and no labels."""

    findings: str = ""
    impression: str = ""
    labels: tuple[str, ...] = ()
    status: str = ""  # preliminary, final, corrected, cancelled
    time: str = ""  # ISO 8601

    def fields(self) -> dict:
        """What it sets in each row of its study."""
        return {"findings": self.findings, "impression": self.impression, "labels": list(self.labels),
                "report_status": self.status, "report_time": self.time, "labels_derived": True}


@dataclass(frozen=True)
class Change:
    """One commit to a model's index in service: first the images of `image_ids` and of `study_uids` are
    deleted, then the rows (each with its image_id) are added with their vectors, replacing any image of
    the same image_id, so adding an image twice leaves it once. Vectors added must come from the export
    the build was made with (`export_sha256`)."""

    vectors: np.ndarray | None = None  # float32 [len(rows), dim], L2-normalised
    rows: tuple[dict, ...] = ()
    image_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    export_sha256: str = ""

    def __post_init__(self):
        count = 0 if self.vectors is None else len(self.vectors)
        if count != len(self.rows):
            raise ValueError(f"a change adds {count} vectors with {len(self.rows)} rows")
        if any(not row.get("image_id") for row in self.rows):
            raise ValueError("every row a change adds needs its image_id")

    def __bool__(self) -> bool:
        return bool(self.rows or self.image_ids or self.study_uids)


@dataclass(frozen=True)
class Committed:
    """What a commit did: its generation (commits of one build are numbered up from 1), images added
    (new image ids), replaced (an image of that id was there) and deleted (by id or study)."""

    generation: int
    added: int = 0
    replaced: int = 0
    deleted: int = 0


class VectorStore(ABC):
    """One model's index, ready to search. `search` blocks: the gateway calls it from a worker thread."""

    manifest: dict  # model, export_sha256, dim, count, index_type, created, source, ...

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def index_type(self) -> str:
        return str(self.manifest.get("index_type", ""))

    @property
    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the index takes where it is stored."""

    @abstractmethod
    def check_filter(self, flt: Filter) -> None:
        """Raise UnknownFilterError, naming the known values, for a value no image carries."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, flt: Filter = Filter()) -> list[Hits]:
        """For each query (float32 [n, dim], L2-normalised), its top k among the images passing `flt`."""

    @abstractmethod
    def rows(self, ids: list[int]) -> list[dict]:
        """The metadata of these ids (image_id, study_uid, filename, projection, labels, report fields)."""

    @abstractmethod
    def study(self, study_uid: str) -> list[dict]:
        """The metadata of every image of one study (empty when it is not indexed)."""

    @abstractmethod
    def image(self, image_id: str) -> dict | None:
        """One image's metadata (None when it is not indexed)."""

    @abstractmethod
    def vectors(self, image_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these indexed images, in their order: float32 [len(image_ids), dim], each row
        L2-normalised. An image indexed twice gives the row `image` shows. Raise ImagesNotFoundError (naming
        every missing id in `missing`) when one of them is not indexed. A quantised index (sq8, ivfpq, opq
        without the full vectors kept for re-ranking, or Milvus's own quantised types where it keeps no raw
        vector) gives its approximate, decoded vector, renormalised."""

    @property
    @abstractmethod
    def labels(self) -> list[str]:
        """The finding labels images of this index carry: the label filter's values."""

    @property
    @abstractmethod
    def projections(self) -> list[str]:
        """The projections of this index: the projection filter's values."""

    @property
    def inline_search(self) -> bool:
        """Whether one search costs less than handing it to a worker thread (a few hundred microseconds
        on a busy host): then the gateway runs it where it is asked."""
        return False

    @abstractmethod
    def studies(self) -> Iterator[StudyIdentity]:
        """Each indexed study's identity, once per accession number its images carry (one, except in a
        merged study): what reports are joined by (cxr.reports)."""

    @abstractmethod
    def apply_reports(self, reports: dict[str, StudyReport]) -> None:
        """Show these reports (keyed by study_uid) in their studies' rows, labels included in the label
        filter, from the next search on; the vectors are not touched. A study not indexed is ignored."""

    def refresh(self) -> bool:
        """Take in the commits made to this build since it was opened or last refreshed (StoreBackend.apply),
        cheaply when there are none; whether anything changed. A store whose backend shows every commit
        to the next search (Milvus) only reads what its manifest says now (count, labels, projections)."""
        return False

    def ready(self) -> bool:
        """Whether the store answers now: the gateway's health says NOT_SERVING while it does not."""
        return True

    def opaque_id(self, value: str) -> str:
        """A stand-in for an image or study id, the same for every query of this index and its rebuilds,
        that reveals nothing of the id without the index's key ("" stays "")."""
        if not value:
            return ""
        return hmac.new(self._id_key, value.encode(), hashlib.sha256).hexdigest()[:OPAQUE_ID_HEX]

    def signature(self, purpose: str, data: bytes) -> bytes:
        """An HMAC-SHA256 of `data` under the index's key, kept apart from opaque ids by `purpose`: what
        the gateway signs (page tokens) so that every replica serving this index, and its rebuilds, checks it."""
        return hmac.new(self._id_key, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    @functools.cached_property
    def _id_key(self) -> bytes:
        key = self.manifest.get(ID_KEY)
        if key:
            return bytes.fromhex(key)
        log.warning("this index was built before opaque ids: each gateway makes up its own until it is rebuilt")
        return secrets.token_bytes(32)

    @property
    def calibration(self) -> Calibration | None:
        """The finding suggestions' calibration kept with this build (StoreBackend.set_calibration), or None:
        then its image queries get no suggestions. One that cannot be read is logged and left unused."""
        kept = self.manifest.get(CALIBRATION_KEY)
        if kept is None:
            return None
        parsed = self.__dict__.get("_calibration")
        if parsed is None or parsed[0] is not kept:  # parsed once per manifest, not once per query
            try:
                parsed = (kept, Calibration.from_dict(kept))
            except ValueError as exc:
                log.warning("the index's calibration of finding suggestions is unusable (%s): no suggestions until "
                            "`cxr index calibrate` is run again", exc)
                parsed = (kept, None)
            self.__dict__["_calibration"] = parsed
        return parsed[1]

    def close(self) -> None:
        """Release what the store holds (connections, mapped files)."""


class StoreWriter(ABC):
    """One new build, filled in chunks: train on a sample first (when `training_size` asks for one),
    then `add` vectors and their rows in id order, then `finish`. Used as a context manager: leaving
    it unfinished discards what was written, and the build in service stays as it was."""

    def __enter__(self) -> StoreWriter:
        return self

    @abstractmethod
    def __exit__(self, *exc) -> None:
        """Discard the staged build unless `finish` swapped it in."""

    @abstractmethod
    def training_size(self) -> int:
        """How many vectors `train` wants before the first `add` (0: none)."""

    @abstractmethod
    def train(self, sample: np.ndarray) -> None:
        """Train the index on a sample of the vectors (float32 [n, dim]) to be added."""

    @abstractmethod
    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        """Append vectors (float32 [n, dim], L2-normalised) and their metadata rows; ids follow on."""

    @abstractmethod
    def finish(self, skipped: list[tuple[str, str]] = ()) -> dict:
        """Seal the build, with the inputs that could not be read (path, reason), swap it in place of
        the one in service and return its manifest."""


class StoreBackend(ABC):
    """Where each model's builds live. The gateway asks it which build is in service (`version`) and
    opens a new one when that changes; `cxr index build` writes through it."""

    name: str  # the index_backend setting that picks it

    @abstractmethod
    def where(self, model: str) -> str:
        """Where the model's index lives, for messages (a folder, or a Milvus address and collection)."""

    @abstractmethod
    def version(self, model: str):
        """What identifies the build in service (compared for equality), or None when there is none.
        A store that cannot be reached raises StoreUnavailableError."""

    @abstractmethod
    def open(self, model: str, dim: int | None = None, export_sha256: str | None = None) -> VectorStore:
        """The build in service, refusing one built by another model, dimension or export
        (IndexMissingError, IndexMismatchError, IndexCorruptError, ...)."""

    @abstractmethod
    def writer(self, model: str, dim: int, count: int, index_type: str, manifest: dict,
               rerank: bool = False) -> StoreWriter:
        """A writer of a new build of `count` vectors, swapped in when it finishes."""

    def write(self, model: str, vectors: np.ndarray, metadata: list[dict], manifest: dict,
              skipped: list[tuple[str, str]], index_type: str, rerank: bool = False) -> dict:
        """A whole build of vectors held in memory (what `cxr index build` has at its end)."""
        assert vectors.shape[0] == len(metadata), (vectors.shape, len(metadata))
        dim = int(vectors.shape[1]) if len(vectors) else int(manifest["dim"])
        with self.writer(model, dim, len(vectors), index_type, manifest, rerank) as writer:
            if writer.training_size():
                writer.train(vectors)
            writer.add(vectors, metadata)
            return writer.finish(skipped)

    @abstractmethod
    def apply(self, model: str, change: Change) -> Committed:
        """Commit `change` to the model's build in service, whole or not at all, and return what it did
        once it is durable: a store refreshed after that sees it (IndexMissingError without a build,
        IndexMismatchError for vectors of another export or dimension)."""

    @abstractmethod
    def pending(self, model: str) -> int:
        """How much the commits since the build was written weigh on searches (rows added or deleted
        since): past the `index_compact_rows` setting, followers compact."""

    @abstractmethod
    def compact(self, model: str) -> dict | None:
        """Fold the commits into the build, off the serving path; commits made meanwhile are kept.
        Returns the compacted build's manifest, or None when there was nothing to fold."""

    @abstractmethod
    def set_calibration(self, model: str, calibration: dict | None) -> None:
        """Keep the finding suggestions' calibration (cxr.suggestions.Calibration.to_dict; None removes it)
        with the model's build in service: its manifest carries it, commits and compaction keep it, a new
        build drops it (its neighbours differ: run `cxr index calibrate` again). Stores see it when they
        next open or refresh the build."""

    def close(self) -> None:
        """Release what the backend holds (a connection); its stores are not used after."""
