"""The backend the settings name, apart from the interface so that the interface imports no backend."""

from __future__ import annotations

from cxr.settings import Settings
from cxr.store.interface import StoreBackend


def backend(settings: Settings) -> StoreBackend:
    """The store the settings name: FAISS files under index_dir, or Milvus at milvus_uri."""
    if settings.index_backend == "milvus":
        from cxr.store.milvus.backend import MilvusBackend  # pymilvus is needed only by those who use it

        return MilvusBackend(settings.milvus_uri, settings.milvus_token)
    from cxr.store.faiss_backend import FaissBackend  # faiss is not loaded where Milvus serves

    return FaissBackend(settings.index_dir, settings.use_gpu, copy_dir=settings.index_copy_dir)
