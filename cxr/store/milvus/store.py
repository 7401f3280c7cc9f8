"""MilvusStore: searches and reads the one build's collection it was opened on."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pymilvus import MilvusException
from pymilvus.client.types import LoadState

from cxr.store.builds import CALIBRATION_KEY
from cxr.store.errors import ImagesNotFoundError, IndexCorruptError, StoreUnavailableError
from cxr.store.image_table import TEXT_COLUMNS, check_known
from cxr.store.interface import Filter, Hits, StudyIdentity, StudyReport, VectorStore
from cxr.store.milvus.aliases import COMMITTING, GENERATION, manifest_of
from cxr.store.milvus.connection import (
    CALL_TIMEOUT_S,
    COLLECTION_NOT_FOUND,
    COLLECTION_NOT_LOADED,
    LOAD_TIMEOUT_S,
    PING_TIMEOUT_S,
    READ_CONSISTENCY,
    Connection,
    error_code,
)
from cxr.store.milvus.filters import filter_expression, literal
from cxr.store.milvus.schema import FIELD_BYTES, ID, ROW_FIELDS, STORED_FIELDS, VECTOR, report_fields, search_params

MAX_NQ = 1024  # queries per search request
MAX_TOP_K = 16_384  # Milvus's limit
IDS_PER_QUERY = 4096
STUDIES_PER_UPSERT = 256


class MilvusStore(VectorStore):
    """One build's collection. Safe to share between threads: the client's channel is."""

    def __init__(self, connection: Connection, collection: str, manifest: dict, where: str):
        self.connection = connection
        self.collection = collection
        self.manifest = manifest
        self.where = where
        self.dim = int(manifest["dim"])
        self.spec = manifest["milvus_index"]
        self._reports: dict[str, StudyReport] = {}  # what rows show beyond their fields: status, time, derived

    @property
    def size_bytes(self) -> int:
        """Vectors and metadata as inserted; Milvus's index and replicas come on top."""
        return int(self.manifest.get("data_bytes", 0))

    @property
    def projections(self) -> list[str]:
        return sorted(self.manifest["projections"])

    @property
    def labels(self) -> list[str]:
        derived = {label for report in self._reports.values() for label in report.labels}
        return sorted(set(self.manifest["labels"]) | derived)

    def check_filter(self, flt: Filter) -> None:
        check_known(flt.projections, flt.labels, self.manifest["projections"], self.labels)

    def search(self, queries: np.ndarray, k: int, flt: Filter = Filter()) -> list[Hits]:
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        self.check_filter(flt)
        k = min(k, self.count, MAX_TOP_K)
        if k <= 0:
            return [[] for _ in queries]
        expr = filter_expression(flt)
        found = [hits for start in range(0, len(queries), MAX_NQ)
                 for hits in self._search(queries[start:start + MAX_NQ], k, expr, self.spec["search"])]
        self._widen_short(queries, k, expr, found)
        assert len(found) == len(queries), (len(found), len(queries))
        return found

    def _search(self, queries: np.ndarray, k: int, expr: str, params: dict) -> list[Hits]:
        answer = self._call(lambda c: c.search(
            self.collection, data=queries, limit=k, filter=expr, output_fields=[ID], anns_field=VECTOR,
            search_params=search_params(params, k), consistency_level=READ_CONSISTENCY, timeout=CALL_TIMEOUT_S))
        return [[(int(hit[ID]), float(hit["distance"])) for hit in hits] for hits in answer]

    def _widen_short(self, queries, k, expr, found) -> None:
        """An IVF search reads nprobe lists, an HNSW search ef candidates; a narrow filter can leave
        fewer than k of its images there. Those queries go again over every list (IVF, as FaissStore
        does) or a far wider beam (HNSW; a cluster's HNSW turns to exact search by itself)."""
        short = [i for i, hits in enumerate(found) if len(hits) < k]
        if not short or self.spec["exhaustive"] is None:
            return
        for i, hits in zip(short, self._search(queries[short], k, expr, self.spec["exhaustive"])):
            found[i] = hits

    def rows(self, ids) -> list[dict]:
        ids = [int(i) for i in ids]
        wanted = sorted(set(ids))
        found: dict[int, dict] = {}
        for start in range(0, len(wanted), IDS_PER_QUERY):
            chunk = wanted[start:start + IDS_PER_QUERY]
            for record in self._query(f"{ID} in {chunk}"):
                found[int(record[ID])] = self._row(record)
        missing = [i for i in wanted if i not in found]
        if missing and self._takes_commits():
            raise StoreUnavailableError(f"{self.where}: ids {missing[:5]} were deleted from collection "
                                        f"{self.collection} by a commit since the search that found them: retry")
        if missing:
            raise IndexCorruptError(f"{self.where}: collection {self.collection} has no rows for ids {missing[:5]} "
                                    f"of its {self.count}: rebuild the index")
        return [dict(found[i]) for i in ids]

    def refresh(self) -> bool:
        """Every search already sees the last commit (Strong reads); what a commit changes here is the
        manifest: the count and the filter values. Re-read (one describe call), taken when its generation moved
        or its calibration changed (StoreBackend.set_calibration)."""
        manifest = self._current_manifest()
        if manifest.get(GENERATION, 0) == self.manifest.get(GENERATION, 0) and \
                manifest.get(CALIBRATION_KEY) == self.manifest.get(CALIBRATION_KEY):
            return False
        self.manifest = manifest  # one reference swapped: a search in flight reads the old or the new
        return True

    def _takes_commits(self) -> bool:
        """Whether a commit has begun on this collection since it was built."""
        manifest = self._current_manifest()
        return bool(manifest.get(GENERATION) or manifest.get(COMMITTING))

    def _current_manifest(self) -> dict:
        described = self._call(lambda c: c.describe_collection(self.collection, timeout=CALL_TIMEOUT_S))
        try:
            return manifest_of(described)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{self.where}: collection {self.collection} has lost its manifest ({exc!r}): "
                                    "rebuild the index") from exc

    def study(self, study_uid: str) -> list[dict]:
        if len(study_uid.encode()) > FIELD_BYTES["study_uid"]:
            return []  # longer than any stored study uid
        records = self._query(f"study_uid == {literal(study_uid)}")
        return [self._row(r) for r in sorted(records, key=lambda r: int(r[ID]))]

    def image(self, image_id: str) -> dict | None:
        if len(image_id.encode()) > FIELD_BYTES["image_id"]:
            return None
        records = self._query(f"image_id == {literal(image_id)}")
        return self._row(min(records, key=lambda r: int(r[ID]))) if records else None

    def vectors(self, image_ids) -> np.ndarray:
        """The vector field as inserted (Milvus keeps the raw vectors beside its index, whatever its type); of
        an image stored twice, the row `image` shows (the lowest id)."""
        wanted = sorted({i for i in image_ids if len(i.encode()) <= FIELD_BYTES["image_id"]})
        found: dict[str, tuple[int, np.ndarray]] = {}
        for start in range(0, len(wanted), IDS_PER_QUERY):
            chunk = ", ".join(literal(i) for i in wanted[start:start + IDS_PER_QUERY])
            for record in self._query(f"image_id in [{chunk}]", [ID, "image_id", VECTOR]):
                key, image_id = int(record[ID]), record["image_id"]
                if image_id not in found or key < found[image_id][0]:
                    found[image_id] = key, np.asarray(record[VECTOR], np.float32)
        missing = [i for i in dict.fromkeys(image_ids) if i not in found]
        if missing:
            raise ImagesNotFoundError(f"{len(missing)} of the images asked for are not in this index", missing)
        vectors = np.stack([found[i][1] for i in image_ids]) if len(image_ids) else np.zeros((0, self.dim), np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _query(self, expr: str, fields: list[str] = ROW_FIELDS) -> list[dict]:
        return self._call(lambda c: c.query(self.collection, filter=expr, output_fields=fields,
                                            consistency_level=READ_CONSISTENCY, timeout=CALL_TIMEOUT_S))

    def _row(self, record: dict) -> dict:
        row = {name: record.get(name) or "" for name in TEXT_COLUMNS}
        row["projection"] = record.get("projection") or ""
        row["labels"] = list(record.get("labels") or ())
        report = self._reports.get(row["study_uid"])
        if report is not None:
            row.update(report_status=report.status, report_time=report.time, labels_derived=True)
        return row

    def studies(self) -> Iterator[StudyIdentity]:
        fields = ["study_uid", "study_instance_uid", "accession_number", "patient_id"]
        iterator = self._call(lambda c: c.query_iterator(
            self.collection, batch_size=IDS_PER_QUERY, filter=f"{ID} >= 0", output_fields=fields,
            consistency_level=READ_CONSISTENCY, timeout=CALL_TIMEOUT_S))
        seen: set[tuple[str, str]] = set()  # (study, accession): once per accession of a merged study
        try:
            while batch := iterator.next():
                for record in batch:
                    identity = StudyIdentity(*(record.get(name) or "" for name in fields))
                    if (identity.study_uid, identity.accession_number) not in seen:
                        seen.add((identity.study_uid, identity.accession_number))
                        yield identity
        finally:
            iterator.close()

    def apply_reports(self, reports: dict[str, StudyReport]) -> None:
        """The report fields of the studies' rows rewritten in place (upsert: the vectors are read back
        and written unchanged); status, time and the derived mark are kept by this store."""
        studies = list(reports)
        for start in range(0, len(studies), STUDIES_PER_UPSERT):
            chunk = studies[start:start + STUDIES_PER_UPSERT]
            records = self._query(f"study_uid in [{', '.join(literal(uid) for uid in chunk)}]", STORED_FIELDS)
            changed = [dict(record, **fields) for record in records
                       for fields in (report_fields(reports[record["study_uid"]]),)
                       if any(record.get(name) != value for name, value in fields.items())]
            if changed:
                self._call(lambda c: c.upsert(self.collection, changed, timeout=CALL_TIMEOUT_S))
        self._reports = {**self._reports, **reports}

    def ready(self) -> bool:
        """Answers, with the collection loaded. A collection found released (a Milvus Lite server
        restarted) is loaded again here, so health recovers without a query."""
        try:
            state = self.connection.call(lambda c: c.get_load_state(self.collection, timeout=PING_TIMEOUT_S))
            if state["state"] == LoadState.NotLoad:
                self._load(PING_TIMEOUT_S)
                return True
        except (StoreUnavailableError, MilvusException):
            return False
        return state["state"] == LoadState.Loaded

    def close(self) -> None:
        """Nothing of its own: the connection is the backend's, shared by every model's store."""

    def _call(self, fn):
        try:
            return self.connection.call(fn)
        except MilvusException as exc:
            if error_code(exc) == COLLECTION_NOT_LOADED:
                self._load(LOAD_TIMEOUT_S)
                return self.connection.call(fn)
            if error_code(exc) == COLLECTION_NOT_FOUND:
                raise StoreUnavailableError(
                    f"{self.where}: collection {self.collection} is gone (replaced by a newer build, or dropped); "
                    "the gateway loads the one in service within seconds: retry") from exc
            raise

    def _load(self, timeout: float) -> None:
        self.connection.call(lambda c: c.load_collection(self.collection, timeout=timeout))

