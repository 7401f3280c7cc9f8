"""MilvusBackend: where the gateway finds each model's index in one Milvus, and how a build is written
there and changed one commit at a time."""

from __future__ import annotations

import logging
import threading

from cxr.settings import SettingsError
from cxr.store.builds import CALIBRATION_KEY, check_model
from cxr.store.errors import IndexCorruptError, IndexMissingError
from cxr.store.interface import Change, Committed, StoreBackend
from cxr.store.milvus import changes
from cxr.store.milvus.aliases import COMMITTING, alias_of, collection_manifest, serving_collection, write_manifest
from cxr.store.milvus.connection import LOAD_TIMEOUT_S, Connection
from cxr.store.milvus.store import MilvusStore
from cxr.store.milvus.writer import DROP_GRACE_S, MilvusWriter

log = logging.getLogger("cxr.milvus_store")  # the name before the package: log settings may name it


class MilvusBackend(StoreBackend):
    """Where the gateway finds each model's index: the collection its alias names, at milvus_uri."""

    name = "milvus"

    def __init__(self, uri: str, token: str = "", drop_grace_s: float = DROP_GRACE_S):
        if not uri:
            raise SettingsError("the milvus backend needs milvus_uri: a Milvus Lite file (indexes/milvus.db) "
                                "or a cluster's http://host:19530")
        self.connection = Connection(uri, token)
        self.drop_grace_s = drop_grace_s
        self._writing = threading.Lock()  # a commit or compaction reads the manifest, then writes it back

    def where(self, model: str) -> str:
        return f"{self.connection.shown} (collection {alias_of(model)})"

    def version(self, model: str) -> str | None:
        """The collection in service: every build has its own name."""
        return serving_collection(self.connection, alias_of(model))

    def open(self, model: str, dim: int | None = None, export_sha256: str | None = None) -> MilvusStore:
        where = self.where(model)
        collection, manifest = self._serving(model, where)
        check_model(where, manifest, model, dim, export_sha256)
        self.connection.call(lambda c: c.load_collection(collection, timeout=LOAD_TIMEOUT_S))
        # The rows a search finds (a Strong count(*)), not the statistics' row count: that one counts
        # deleted rows until compaction (and, on a cluster, only flushed ones). A commit writes the
        # manifest's count after its rows: they differ while one is under way or was cut short, which
        # its manifest says (COMMITTING); otherwise rows went missing outside our writes.
        live = changes.live_count(self.connection, collection)
        if live != manifest.get("count") and manifest.get(COMMITTING):
            log.warning("%s: commit %s to %s is under way or was cut short; serving its %d rows (the manifest says "
                        "%s) until the follower's next commit", where, manifest[COMMITTING], collection, live,
                        manifest.get("count"))
            manifest = dict(manifest, count=live)
        if live != manifest.get("count"):
            raise IndexCorruptError(f"{where}: collection {collection} holds {live} rows; its manifest says "
                                    f"{manifest.get('count')}: rebuild it with `cxr index build --model {model} ...`")
        return MilvusStore(self.connection, collection, manifest, where)

    def writer(self, model: str, dim: int, count: int, index_type: str, manifest: dict,
               rerank: bool = False) -> MilvusWriter:
        """Vectors and rows added in chunks into a new collection, switched in on finish."""
        return MilvusWriter(self.connection, model, dim, count, index_type, manifest, rerank, self.drop_grace_s)

    def apply(self, model: str, change: Change) -> Committed:
        """On the collection in service, seen by every process's next search (changes.py says how)."""
        with self._writing:
            where = self.where(model)
            collection, manifest = self._serving(model, where)
            return changes.commit(self.connection, collection, manifest, change, where)

    def pending(self, model: str) -> int:
        """Rows added and deleted (replaced: both) since the build was written or last compacted."""
        return changes.pending_rows(self._serving(model, self.where(model))[1])

    def compact(self, model: str) -> dict | None:
        with self._writing:
            where = self.where(model)
            collection, manifest = self._serving(model, where)
            if not changes.pending_rows(manifest):
                return None
            return changes.compact(self.connection, collection, manifest, where)

    def set_calibration(self, model: str, calibration: dict | None) -> None:
        """In the manifest property, which commits and compaction read and write back whole: they keep it.
        A follower in another process that read the manifest before this write and commits after it puts
        back the manifest it read: run `cxr index calibrate` while no follower commits to the model."""
        with self._writing:
            where = self.where(model)
            collection, manifest = self._serving(model, where)
            manifest = {name: value for name, value in manifest.items() if name != CALIBRATION_KEY}
            if calibration is not None:
                manifest[CALIBRATION_KEY] = calibration
            write_manifest(self.connection, collection, manifest)

    def close(self) -> None:
        self.connection.close()

    def _serving(self, model: str, where: str) -> tuple[str, dict]:
        """The collection in service and its manifest."""
        collection = self.version(model)
        if collection is None:
            raise IndexMissingError(f"no index of {model} in Milvus at {where}: build one with `cxr index build "
                                    f"--model {model} ...` and index_backend = \"milvus\"")
        try:
            return collection, collection_manifest(self.connection, collection)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{where}: collection {collection} has no readable manifest ({exc!r}); rebuild "
                                    f"it with `cxr index build --model {model} ...`") from exc
