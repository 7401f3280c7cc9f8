"""The factory picks the backend the settings name."""

from dataclasses import replace

import pytest

from cxr.settings import Settings
from cxr.store import factory
from cxr.store.faiss_backend import FaissBackend


def test_faiss_is_the_default(tmp_path):
    backend = factory.backend(Settings(index_dir=tmp_path))
    assert isinstance(backend, FaissBackend) and backend.where("m") == str(tmp_path / "m")


def test_milvus_when_the_settings_say_so(tmp_path):
    pytest.importorskip("pymilvus")
    from cxr.store.milvus.backend import MilvusBackend

    settings = replace(Settings(), index_backend="milvus", milvus_uri=str(tmp_path / "milvus.db"))
    backend = factory.backend(settings)
    assert isinstance(backend, MilvusBackend) and backend.name == "milvus"
    backend.close()  # never connected: nothing to release
