"""MilvusBackend: where the gateway finds each model's index in one Milvus, and how a build is written there."""

from __future__ import annotations

from cxr.settings import SettingsError
from cxr.store.builds import check_model
from cxr.store.errors import IndexCorruptError, IndexMissingError
from cxr.store.interface import StoreBackend
from cxr.store.milvus.aliases import alias_of, collection_manifest, serving_collection
from cxr.store.milvus.connection import CALL_TIMEOUT_S, LOAD_TIMEOUT_S, Connection
from cxr.store.milvus.store import MilvusStore
from cxr.store.milvus.writer import DROP_GRACE_S, MilvusWriter


class MilvusBackend(StoreBackend):
    """Where the gateway finds each model's index: the collection its alias names, at milvus_uri."""

    name = "milvus"

    def __init__(self, uri: str, token: str = "", drop_grace_s: float = DROP_GRACE_S):
        if not uri:
            raise SettingsError("the milvus backend needs milvus_uri: a Milvus Lite file (indexes/milvus.db) "
                                "or a cluster's http://host:19530")
        self.connection = Connection(uri, token)
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
               rerank: bool = False) -> MilvusWriter:
        """Vectors and rows added in chunks into a new collection, switched in on finish."""
        return MilvusWriter(self.connection, model, dim, count, index_type, manifest, rerank, self.drop_grace_s)

    def close(self) -> None:
        self.connection.close()

    def apply(self, model: str, change):
        raise NotImplementedError("being written: issue 20")

    def pending(self, model: str) -> int:
        raise NotImplementedError("being written: issue 20")

    def compact(self, model: str):
        raise NotImplementedError("being written: issue 20")
