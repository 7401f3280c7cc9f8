"""The `milvus` vector store: one model's index as a Milvus collection, in a Milvus Lite file
(milvus_uri = indexes/milvus.db) or a Milvus cluster (http://host:19530); the same client and code.

<alias>              cxr_<model>_<hash>: names the collection in service. A rebuild fills a new
                     collection and moves the alias onto it in one step, then drops the old one.
<alias>__<built>     one build: id (row position 0..n-1, as in FAISS), vector (COSINE), the metadata
                     columns of cxr.image_table, and lower-cased copies of projection and labels that
                     filters match (filters ignore case)
  cxr.manifest       a collection property: the build's manifest (model, export, dim, count, index type,
                     created, distinct labels and projections), written before the alias moves

A store searches the collection it was opened on, never the alias: its manifest, its filter values
and the rows it reads belong to one build even while the alias moves.

Milvus Lite 3.2 (pure Python, in the process that opens the file) builds FLAT, HNSW, IVF_FLAT and
IVF_SQ8 and supports aliases, collection properties and array_contains_any. It accepts IVF_PQ but
never builds it (it searches unindexed), so `ivfpq` is refused there. It serves a file to one
process at a time, and forgets which collections were loaded when that process ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.client.types import LoadState, Status
from pymilvus.exceptions import ConnectionConfigException

from cxr import faiss_index
from cxr.errors import CxrError
from cxr.image_table import TEXT_COLUMNS, check_known
from cxr.settings import SettingsError
from cxr.vector_store import (
    ID_KEY,
    Filter,
    Hits,
    IndexCorruptError,
    IndexMissingError,
    StoreUnavailableError,
    VectorStore,
    check_model,
    id_key_for,
)

log = logging.getLogger("cxr.milvus_store")

ID, VECTOR, PROJECTION_KEY, LABEL_KEYS = "id", "vector", "projection_key", "label_keys"
ROW_FIELDS = [ID, *TEXT_COLUMNS, "projection", "labels"]
MANIFEST_PROPERTY = "cxr.manifest"
METRIC = "COSINE"  # the vectors are L2-normalised: the same order and scores as FAISS's inner product

# An identifier cut short would name another image or study, so a longer one is refused; report
# text is cut at Milvus's VARCHAR limit (UTF-8 bytes, which Milvus counts) and the cuts are counted.
FIELD_BYTES = {"image_id": 512, "study_uid": 512, "patient_id": 256, "filename": 1024, "path": 4096,
               "projection": 256, "study_instance_uid": 64, "series_instance_uid": 64, "sop_instance_uid": 64,
               "accession_number": 64, "study_date": 16, "view_position": 64, "patient_name": 1024}  # DICOM VR limits
REPORT_COLUMNS = ("findings", "impression", "indication")
REPORT_BYTES = 65_535
LABEL_BYTES = 256
MAX_LABELS = 256

MILVUS_INDEX = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "sq8": "IVF_SQ8", "ivfpq": "IVF_PQ"}
LITE_UNBUILT = ("IVF_PQ",)
# pymilvus 3 sends build parameters as top-level keys; Milvus Lite 3.2 reads them only from a "params"
# key, so it builds with its defaults (HNSW M=16, efConstruction=200; IVF 128 lists, fewer on small
# segments). Search parameters do reach it.
LITE_IVF_NLIST = 128
HNSW_MAX_EF = 32_768  # the beam of the second search of a query a narrow filter left short
HNSW_EF_CONSTRUCTION = 200  # built once per sealed segment in the background: a better graph costs no query time

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 2.0
LOAD_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 600.0
INDEX_WAIT_S = 1800.0
RECONNECT_AFTER_S = 1.0  # while the server is down, calls fail at once instead of each waiting to connect
DROP_GRACE_S = 5.0  # gateways look for a new build every second: this long to move off the old collection
INSERT_BYTES = 8 << 20  # per insert request, well under Milvus's 64 MB message limit
MAX_NQ = 1024  # queries per search request
MAX_TOP_K = 16_384  # Milvus's limit
IDS_PER_QUERY = 4096
COLLECTION_NOT_FOUND, COLLECTION_NOT_LOADED = 100, 101  # Milvus error codes (the same in Lite)


class MilvusLimitError(CxrError, ValueError):
    """A row does not fit the collection's fields."""


def alias_of(model: str) -> str:
    """Milvus names allow letters, digits and '_': the hash keeps `a-b` and `a_b` apart."""
    readable = re.sub(r"[^0-9A-Za-z_]", "_", model)
    return f"cxr_{readable}_{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def shown_uri(uri: str) -> str:
    """The URI without credentials, for messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=host).geturl()


def _unreachable(exc: Exception) -> bool:
    if isinstance(exc, grpc.FutureTimeoutError):
        return True
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(exc, MilvusException) and exc.code in (
        Status.CONNECT_FAILED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _code(exc: Exception):
    return exc.code if isinstance(exc, MilvusException) else None


class _Connection:
    """One client for every store and look-up of a backend. A client whose server went away is
    dropped, and the next call connects again: pymilvus would otherwise keep a dead channel."""

    def __init__(self, uri: str, token: str):
        self.uri = uri
        self.shown = shown_uri(uri)
        self._token = token
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._last_failure = ""

    def call(self, fn):
        client = self._connected()
        try:
            return fn(client)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self._forget(client, exc)
            raise StoreUnavailableError(self._unavailable()) from exc

    def server_version(self) -> str:
        """Milvus Lite's "milvus_lite-3.2.2", or a cluster's release ("v2.5.4")."""
        return str(self.call(lambda c: c.get_server_version(timeout=CALL_TIMEOUT_S)))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _connected(self) -> MilvusClient:
        with self._lock:  # one thread connects; the others wait for its client
            if self._client is not None:
                return self._client
            if time.monotonic() < self._retry_at:
                raise StoreUnavailableError(self._unavailable())
            try:
                self._client = self._connect()
            except StoreUnavailableError:
                self._retry_at = time.monotonic() + RECONNECT_AFTER_S
                raise
            return self._client

    def _connect(self) -> MilvusClient:
        if self.uri.endswith(".db"):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            # A channel of its own: gRPC shares connections to one address across a process, and a
            # shared one that failed waits out its reconnect backoff (up to minutes) after the server is back.
            return MilvusClient(self.uri, token=self._token, timeout=CONNECT_TIMEOUT_S, dedicated=True,
                                grpc_options={"grpc.use_local_subchannel_pool": 1})
        except ConnectionConfigException as exc:
            if self.uri.endswith(".db"):
                self._last_failure = (
                    f"Milvus Lite cannot open {self.uri} (see the log above). Milvus Lite serves a file to one "
                    "process at a time: stop the other process using it, or run `milvus-lite server --data-dir "
                    f"{self.uri} --port 19530` and give every process milvus_uri = http://127.0.0.1:19530")
                raise StoreUnavailableError(self._last_failure) from exc
            raise SettingsError(f"milvus_uri = {self.shown!r} is not a Milvus address: use a Milvus Lite file "
                                "ending in .db, or http(s)://host:19530 for a cluster") from exc
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self._last_failure = self._scrubbed(exc)
            raise StoreUnavailableError(self._unavailable()) from exc

    def _forget(self, client: MilvusClient, exc: Exception) -> None:
        with self._lock:
            if self._client is not client:
                return  # another thread already dropped it
            self._client = None
            self._last_failure = self._scrubbed(exc)
        try:
            client.close()
        except Exception:  # noqa: BLE001 - a dead channel may fail to close; it is gone either way
            pass

    def _scrubbed(self, exc: Exception) -> str:
        text = getattr(exc, "message", None) or str(exc)
        return text.replace(self._token, "***") if self._token else text

    def _unavailable(self) -> str:
        return (f"Milvus at {self.shown} is unreachable ({self._last_failure}): start it, or point milvus_uri "
                "at a running Milvus; queries succeed again once it answers")


# ---- index types -----------------------------------------------------------------------------------

def index_spec(index_type: str, dim: int, count: int, lite: bool) -> dict:
    """Milvus's index for our index type: its build parameters, and its search parameters for a
    normal and for an exhaustive search (IVF: every list, so that a narrow filter hides no match)."""
    if index_type not in MILVUS_INDEX:
        raise ValueError(f"index type {index_type!r} has no Milvus counterpart: use one of {sorted(MILVUS_INDEX)} "
                         "with the milvus backend (opq exists only in FAISS)")
    kind = MILVUS_INDEX[index_type]
    if lite and kind in LITE_UNBUILT:
        raise ValueError(f"Milvus Lite cannot build {kind} (--index-type {index_type}): it would search unindexed. "
                         "Use sq8 for a compact index, or a Milvus cluster")
    if kind == "FLAT":
        return {"type": kind, "build": {}, "search": {}, "exhaustive": None}
    if kind == "HNSW":
        return {"type": kind, "build": {"M": faiss_index.HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
                "search": {"ef": faiss_index.HNSW_EF_SEARCH},
                "exhaustive": {"ef": max(faiss_index.HNSW_EF_SEARCH, min(count, HNSW_MAX_EF))}}
    nlist = faiss_index.nlist_for(count)
    build = {"nlist": nlist}
    if kind == "IVF_PQ":
        # FAISS's choices for the same index (faiss_index keeps them); Milvus needs dim % m == 0 too.
        build.update(m=faiss_index.pq_codes(dim), nbits=faiss_index.pq_bits(count))
    lists = max(nlist, LITE_IVF_NLIST) if lite else nlist
    return {"type": kind, "build": build, "search": {"nprobe": min(faiss_index.IVF_NPROBE, nlist)},
            "exhaustive": {"nprobe": lists}}


def _search_params(params: dict, k: int) -> dict:
    if "ef" in params:
        params = dict(params, ef=max(params["ef"], k))  # Milvus refuses ef < k
    return {"metric_type": METRIC, "params": params}


# ---- filters ---------------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def literal(text: str) -> str:
    """A string literal of Milvus's filter language (Milvus Lite ignores filter templates)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _list(values) -> str:
    return "[" + ", ".join(literal(v) for v in sorted({v.lower() for v in values})) + "]"


def filter_expression(flt: Filter) -> str:
    """Any of the labels and any of the projections, on the lower-cased copies."""
    parts = []
    if flt.labels:
        parts.append(f"array_contains_any({LABEL_KEYS}, {_list(flt.labels)})")
    if flt.projections:
        parts.append(f"{PROJECTION_KEY} in {_list(flt.projections)}")
    return " and ".join(parts)


# ---- the store -------------------------------------------------------------------------------------

class MilvusStore(VectorStore):
    """One build's collection. Safe to share between threads: the client's channel is."""

    def __init__(self, connection: _Connection, collection: str, manifest: dict, where: str):
        self.connection = connection
        self.collection = collection
        self.manifest = manifest
        self.where = where
        self.dim = int(manifest["dim"])
        self.spec = manifest["milvus_index"]

    @property
    def size_bytes(self) -> int:
        """Vectors and metadata as inserted; Milvus's index and replicas come on top."""
        return int(self.manifest.get("data_bytes", 0))

    @property
    def projections(self) -> list[str]:
        return sorted(self.manifest["projections"])

    @property
    def labels(self) -> list[str]:
        return sorted(self.manifest["labels"])

    def check_filter(self, flt: Filter) -> None:
        check_known(flt.projections, flt.labels, self.manifest["projections"], self.manifest["labels"])

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
            search_params=_search_params(params, k), timeout=CALL_TIMEOUT_S))
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
                found[int(record[ID])] = _row(record)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise IndexCorruptError(f"{self.where}: collection {self.collection} has no rows for ids {missing[:5]} "
                                    f"of its {self.count}: rebuild the index")
        return [dict(found[i]) for i in ids]

    def study(self, study_uid: str) -> list[dict]:
        if len(study_uid.encode()) > FIELD_BYTES["study_uid"]:
            return []  # longer than any stored study uid
        records = self._query(f"study_uid == {literal(study_uid)}")
        return [_row(r) for r in sorted(records, key=lambda r: int(r[ID]))]

    def image(self, image_id: str) -> dict | None:
        if len(image_id.encode()) > FIELD_BYTES["image_id"]:
            return None
        records = self._query(f"image_id == {literal(image_id)}")
        return _row(min(records, key=lambda r: int(r[ID]))) if records else None

    def _query(self, expr: str) -> list[dict]:
        return self._call(lambda c: c.query(self.collection, filter=expr, output_fields=ROW_FIELDS,
                                            timeout=CALL_TIMEOUT_S))

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
            if _code(exc) == COLLECTION_NOT_LOADED:
                self._load(LOAD_TIMEOUT_S)
                return self.connection.call(fn)
            if _code(exc) == COLLECTION_NOT_FOUND:
                raise StoreUnavailableError(
                    f"{self.where}: collection {self.collection} is gone (replaced by a newer build, or dropped); "
                    "the gateway loads the one in service within seconds: retry") from exc
            raise

    def _load(self, timeout: float) -> None:
        self.connection.call(lambda c: c.load_collection(self.collection, timeout=timeout))


def _row(record: dict) -> dict:
    row = {name: record.get(name) or "" for name in TEXT_COLUMNS}
    row["projection"] = record.get("projection") or ""
    row["labels"] = list(record.get("labels") or ())
    return row


# ---- building --------------------------------------------------------------------------------------

def _schema(dim: int):
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    for name in TEXT_COLUMNS:
        schema.add_field(name, DataType.VARCHAR, max_length=FIELD_BYTES.get(name, REPORT_BYTES))
    for name in ("projection", PROJECTION_KEY):
        schema.add_field(name, DataType.VARCHAR, max_length=FIELD_BYTES["projection"])
    for name in ("labels", LABEL_KEYS):
        schema.add_field(name, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LABELS,
                         max_length=LABEL_BYTES)
    return schema


def _index_params(spec: dict, lite: bool):
    params = MilvusClient.prepare_index_params()
    params.add_index(VECTOR, index_type=spec["type"], metric_type=METRIC, params=spec["build"])
    # Milvus Lite has no scalar index on arrays; a cluster filters labels faster with one.
    for name in ("study_uid", PROJECTION_KEY) + (() if lite else (LABEL_KEYS,)):
        params.add_index(name, index_type="INVERTED")
    return params


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` UTF-8 bytes, never half a character."""
    data = text.encode()
    return (text, False) if len(data) <= limit else (data[:limit].decode(errors="ignore"), True)


class MilvusIndexWriter:
    """Fills a new collection in chunks and, on `finish`, moves the model's alias onto it; the
    collection in service is untouched until then and dropped after."""

    def __init__(self, connection: _Connection, model: str, dim: int, count: int, index_type: str, manifest: dict,
                 rerank: bool = False, drop_grace_s: float = DROP_GRACE_S):
        if rerank:
            raise ValueError("the milvus backend keeps no full vectors to re-rank a compressed index (--rerank): "
                             "leave it out, or use --index-type hnsw or ivf for full-precision vectors")
        self.server = connection.server_version()
        lite = self.server.startswith("milvus_lite")
        self.connection = connection
        self.alias = alias_of(model)
        self.dim = dim
        self.spec = index_spec(index_type, dim, count, lite)
        self.manifest = dict(manifest, dim=dim, index_type=index_type, rerank=False,
                             **{ID_KEY: id_key_for(_serving_manifest(connection, self.alias))})
        self.drop_grace_s = drop_grace_s
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.collection = f"{self.alias}__{stamp}_{secrets.token_hex(3)}"
        self.count = 0
        self._labels: dict[str, None] = {}  # names in first-seen order, as TableWriter keeps them
        self._projections: dict[str, None] = {}
        self._bytes = 0
        self._truncated = 0
        self._finished = False
        connection.call(lambda c: c.create_collection(self.collection, schema=_schema(dim), timeout=BUILD_TIMEOUT_S))
        try:
            connection.call(lambda c: c.create_index(self.collection, _index_params(self.spec, lite),
                                                     timeout=BUILD_TIMEOUT_S))
        except Exception:
            self._drop_staging()
            raise

    def __enter__(self) -> MilvusIndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self._finished:
            self._drop_staging()

    def training_size(self) -> int:
        """Milvus trains IVF lists itself, on each segment's vectors."""
        return 0

    def train(self, sample: np.ndarray) -> None:
        pass

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        assert len(vectors) == len(rows), (len(vectors), len(rows))
        vectors = np.ascontiguousarray(vectors, np.float32)
        assert vectors.ndim == 2 and vectors.shape[1] == self.dim, (vectors.shape, self.dim)
        batch, size = [], 0
        for vector, row in zip(vectors, rows):
            record, record_bytes = self._record(vector, row)
            batch.append(record)
            size += record_bytes
            if size >= INSERT_BYTES:
                self._insert(batch)
                batch, size = [], 0
        self._insert(batch)

    def _record(self, vector: np.ndarray, row: dict) -> tuple[dict, int]:
        position = self.count
        self.count += 1
        record = {ID: position, VECTOR: vector}
        for name in TEXT_COLUMNS:
            record[name] = self._text(name, row, position)
        projection = self._text("projection", row, position)
        labels = [self._label(str(label), row, position) for label in row.get("labels") or ()]
        if len(labels) > MAX_LABELS:
            raise self._too_long(row, position, f"{len(labels)} labels", f"{MAX_LABELS}")
        record.update(projection=projection, labels=labels, **{PROJECTION_KEY: projection.lower(),
                                                                LABEL_KEYS: [label.lower() for label in labels]})
        if projection:
            self._projections.setdefault(projection)
        self._labels.update(dict.fromkeys(labels))
        texts = [v for v in record.values() if isinstance(v, str)] + labels * 2
        size = vector.nbytes + 8 + sum(len(text.encode()) for text in texts)
        self._bytes += size
        return record, size

    def _text(self, name: str, row: dict, position: int) -> str:
        text = str(row.get(name) or "")
        if name in REPORT_COLUMNS:
            text, cut = _cut(text, REPORT_BYTES)
            self._truncated += cut
            return text
        if len(text.encode()) > FIELD_BYTES[name]:
            raise self._too_long(row, position, f"{name} of {len(text.encode())} bytes", f"{FIELD_BYTES[name]} bytes")
        return text

    def _label(self, label: str, row: dict, position: int) -> str:
        if len(label.encode()) > LABEL_BYTES:
            raise self._too_long(row, position, f"a label of {len(label.encode())} bytes", f"{LABEL_BYTES} bytes")
        return label

    @staticmethod
    def _too_long(row: dict, position: int, what: str, limit: str) -> MilvusLimitError:
        return MilvusLimitError(f"image {position} ({str(row.get('image_id'))[:80]!r}) has {what}; the milvus backend "
                                f"stores at most {limit}: shorten it in the archive's metadata, or use the faiss "
                                "backend")

    def _insert(self, batch: list[dict]) -> None:
        if batch:
            self.connection.call(lambda c: c.insert(self.collection, batch, timeout=BUILD_TIMEOUT_S))

    def finish(self, skipped: list[tuple[str, str]] = ()) -> dict:
        self._seal()
        manifest = dict(self.manifest, count=self.count, skipped=len(skipped), collection=self.collection,
                        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        labels=list(self._labels), projections=list(self._projections), milvus_index=self.spec,
                        milvus_server=self.server, data_bytes=self._bytes, truncated_reports=self._truncated)
        self.connection.call(lambda c: c.alter_collection_properties(
            self.collection, {MANIFEST_PROPERTY: json.dumps(manifest)}, timeout=BUILD_TIMEOUT_S))
        previous = serving_collection(self.connection, self.alias)
        self._point_alias(previous)
        self._finished = True
        if previous is not None:
            time.sleep(self.drop_grace_s)
            self.connection.call(lambda c: c.drop_collection(previous, timeout=BUILD_TIMEOUT_S))
        return manifest

    def _seal(self) -> None:
        """Flushed, indexed and loaded, so that the first query after the switch is as fast as the rest."""
        self.connection.call(lambda c: c.flush(self.collection, timeout=BUILD_TIMEOUT_S))
        self._wait_indexed()
        self.connection.call(lambda c: c.load_collection(self.collection, timeout=INDEX_WAIT_S))
        stored = int(self.connection.call(
            lambda c: c.get_collection_stats(self.collection, timeout=BUILD_TIMEOUT_S))["row_count"])
        if stored != self.count:
            raise IndexCorruptError(f"collection {self.collection} holds {stored} rows after {self.count} were "
                                    f"inserted into Milvus at {self.connection.shown}; nothing was switched: "
                                    "build again")

    def _wait_indexed(self) -> None:
        deadline = time.monotonic() + INDEX_WAIT_S
        while time.monotonic() < deadline:
            index = self.connection.call(lambda c: c.describe_index(self.collection, VECTOR, timeout=CALL_TIMEOUT_S))
            if index.get("state") == "Failed":
                raise IndexCorruptError(f"Milvus at {self.connection.shown} failed to build the {self.spec['type']} "
                                        f"index of {self.collection}: {index.get('index_state_fail_reason')}")
            if not index.get("pending_index_rows") and index.get("indexed_rows", 0) >= index.get("total_rows", 0):
                return
            time.sleep(1.0)
        log.warning("%s: the %s index is still building after %.0f s; switching to it anyway (searches are exact "
                    "on segments not yet indexed)", self.collection, self.spec["type"], INDEX_WAIT_S)

    def _point_alias(self, previous: str | None) -> None:
        if previous is None:
            self.connection.call(lambda c: c.create_alias(self.collection, self.alias, timeout=CALL_TIMEOUT_S))
        else:
            self.connection.call(lambda c: c.alter_alias(self.collection, self.alias, timeout=CALL_TIMEOUT_S))

    def _drop_staging(self) -> None:
        try:
            self.connection.call(lambda c: c.drop_collection(self.collection, timeout=BUILD_TIMEOUT_S))
        except (StoreUnavailableError, MilvusException) as exc:
            log.warning("could not drop the unfinished collection %s: %s", self.collection, exc)


def collection_manifest(connection: _Connection, collection: str) -> dict:
    """A collection's manifest property; KeyError, TypeError or ValueError when it has none readable."""
    described = connection.call(lambda c: c.describe_collection(collection, timeout=CALL_TIMEOUT_S))
    manifest = json.loads(described.get("properties", {})[MANIFEST_PROPERTY])
    manifest["milvus_index"]["search"]
    return manifest


def _serving_manifest(connection: _Connection, alias: str) -> dict | None:
    """The manifest of the build in service under `alias`, if it has a readable one."""
    collection = serving_collection(connection, alias)
    try:
        return collection_manifest(connection, collection) if collection else None
    except (KeyError, TypeError, ValueError):
        return None


def serving_collection(connection: _Connection, alias: str) -> str | None:
    """The collection an alias names, or None. Listing first: pymilvus logs every failed call as an error."""
    aliases = connection.call(lambda c: c.list_aliases(timeout=CALL_TIMEOUT_S))["aliases"]
    if alias not in aliases:
        return None
    return connection.call(lambda c: c.describe_alias(alias, timeout=CALL_TIMEOUT_S))["collection_name"]


# ---- the backend -----------------------------------------------------------------------------------

class MilvusBackend:
    """Where the gateway finds each model's index: the collection its alias names, at milvus_uri."""

    name = "milvus"

    def __init__(self, uri: str, token: str = "", drop_grace_s: float = DROP_GRACE_S):
        if not uri:
            raise SettingsError("the milvus backend needs milvus_uri: a Milvus Lite file (indexes/milvus.db) "
                                "or a cluster's http://host:19530")
        self.connection = _Connection(uri, token)
        self.drop_grace_s = drop_grace_s

    def where(self, model: str) -> str:
        return f"{self.connection.shown} (collection {alias_of(model)})"

    def version(self, model: str) -> str | None:
        """The collection in service: every build has its own name."""
        return serving_collection(self.connection, alias_of(model))

    def open(self, model: str, dim: int | None = None, export_sha256: str | None = None) -> MilvusStore:
        where = self.where(model)
        collection = self.version(model)
        if collection is None:
            raise IndexMissingError(f"no index of {model} in Milvus at {where}: build one with `cxr index build "
                                    f"--model {model} ...` and index_backend = \"milvus\"")
        manifest = self._manifest(where, collection, model)
        check_model(where, manifest, model, dim, export_sha256)
        self.connection.call(lambda c: c.load_collection(collection, timeout=LOAD_TIMEOUT_S))
        stored = int(self.connection.call(
            lambda c: c.get_collection_stats(collection, timeout=CALL_TIMEOUT_S))["row_count"])
        if stored != manifest.get("count"):
            raise IndexCorruptError(f"{where}: collection {collection} holds {stored} rows; its manifest says "
                                    f"{manifest.get('count')}: rebuild it with `cxr index build --model {model} ...`")
        return MilvusStore(self.connection, collection, manifest, where)

    def _manifest(self, where: str, collection: str, model: str) -> dict:
        try:
            return collection_manifest(self.connection, collection)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{where}: collection {collection} has no readable manifest ({exc!r}); rebuild "
                                    f"it with `cxr index build --model {model} ...`") from exc

    def writer(self, model: str, dim: int, count: int, index_type: str, manifest: dict,
               rerank: bool = False) -> MilvusIndexWriter:
        """Vectors and rows added in chunks into a new collection, switched in on finish."""
        return MilvusIndexWriter(self.connection, model, dim, count, index_type, manifest, rerank, self.drop_grace_s)

    def write(self, model: str, vectors: np.ndarray, metadata: list[dict], manifest: dict,
              skipped: list[tuple[str, str]], index_type: str, rerank: bool = False) -> dict:
        assert vectors.shape[0] == len(metadata), (vectors.shape, len(metadata))
        dim = int(vectors.shape[1]) if len(vectors) else int(manifest["dim"])
        with self.writer(model, dim, len(vectors), index_type, manifest, rerank) as writer:
            writer.add(vectors, metadata)
            return writer.finish(skipped)

    def close(self) -> None:
        self.connection.close()
