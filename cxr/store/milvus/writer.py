"""MilvusWriter: fills a new build's collection in chunks and moves the model's alias onto it."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time

import numpy as np
from pymilvus import MilvusException

from cxr.store.builds import ID_KEY, INDEX_FORMAT, id_key_for
from cxr.store.errors import IndexCorruptError, StoreUnavailableError
from cxr.store.interface import StoreWriter
from cxr.store.milvus.aliases import alias_of, serving_collection, serving_manifest, write_manifest
from cxr.store.milvus.connection import BUILD_TIMEOUT_S, CALL_TIMEOUT_S, Connection
from cxr.store.milvus.records import RecordBuilder, batches
from cxr.store.milvus.schema import VECTOR, collection_schema, index_params, index_spec

log = logging.getLogger("cxr.milvus_store")  # the name before the package: log settings may name it

INDEX_WAIT_S = 1800.0
DROP_GRACE_S = 5.0  # gateways look for a new build every second: this long to move off the old collection


class MilvusWriter(StoreWriter):
    """Fills a new collection in chunks and, on `finish`, moves the model's alias onto it; the
    collection in service is untouched until then and dropped after."""

    def __init__(self, connection: Connection, model: str, dim: int, count: int, index_type: str, manifest: dict,
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
                             **{ID_KEY: id_key_for(serving_manifest(connection, self.alias))})
        self.drop_grace_s = drop_grace_s
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.collection = f"{self.alias}__{stamp}_{secrets.token_hex(3)}"
        self.count = 0
        self._records = RecordBuilder()
        self._finished = False
        connection.call(lambda c: c.create_collection(self.collection, schema=collection_schema(dim),
                                                      timeout=BUILD_TIMEOUT_S))
        try:
            connection.call(lambda c: c.create_index(self.collection, index_params(self.spec, lite),
                                                     timeout=BUILD_TIMEOUT_S))
        except Exception:
            self._drop_staging()
            raise

    def __enter__(self) -> MilvusWriter:
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
        for batch in batches(self._record(vector, row) for vector, row in zip(vectors, rows)):
            self._insert(batch)

    def _record(self, vector: np.ndarray, row: dict) -> tuple[dict, int]:
        position = self.count
        self.count += 1
        return self._records.record(position, vector, row, f"image {position}")

    def _insert(self, batch: list[dict]) -> None:
        if batch:
            self.connection.call(lambda c: c.insert(self.collection, batch, timeout=BUILD_TIMEOUT_S))

    def finish(self, skipped: list[tuple[str, str]] = ()) -> dict:
        self._seal()
        manifest = dict(self.manifest, format=INDEX_FORMAT, count=self.count, skipped=len(skipped),
                        collection=self.collection,
                        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        labels=list(self._records.labels), projections=list(self._records.projections),
                        milvus_index=self.spec, milvus_server=self.server, data_bytes=self._records.bytes,
                        truncated_reports=self._records.truncated)
        write_manifest(self.connection, self.collection, manifest, BUILD_TIMEOUT_S)
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
