"""Both backends implement the written interface; a half-implemented one cannot be made; the interface's
own `write` drives any writer; and the interface, the factory and the Milvus backend load no faiss."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr.store.faiss_backend import FaissBackend
from cxr.store.faiss_store import FaissStore
from cxr.store.faiss_writer import FaissWriter
from cxr.store.interface import Filter, StoreBackend, StoreWriter, VectorStore

REPO = Path(__file__).resolve().parents[4]


def test_the_faiss_classes_implement_the_interface():
    assert issubclass(FaissBackend, StoreBackend)
    assert issubclass(FaissStore, VectorStore)
    assert issubclass(FaissWriter, StoreWriter)


def test_the_milvus_classes_implement_the_interface():
    pytest.importorskip("pymilvus")
    from cxr.store.milvus.backend import MilvusBackend
    from cxr.store.milvus.store import MilvusStore
    from cxr.store.milvus.writer import MilvusWriter

    assert issubclass(MilvusBackend, StoreBackend)
    assert issubclass(MilvusStore, VectorStore)
    assert issubclass(MilvusWriter, StoreWriter)


@pytest.mark.parametrize("interface", [StoreBackend, StoreWriter, VectorStore])
def test_a_backend_missing_a_method_cannot_be_made(interface):
    class Half(interface):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Half()


class _Writer(StoreWriter):
    def __init__(self, wants: int):
        self.wants, self.calls = wants, []

    def __exit__(self, *exc) -> None:
        self.calls.append("exit")

    def training_size(self) -> int:
        return self.wants

    def train(self, sample) -> None:
        self.calls.append(("train", len(sample)))

    def add(self, vectors, rows) -> None:
        self.calls.append(("add", len(vectors), len(rows)))

    def finish(self, skipped=()) -> dict:
        self.calls.append(("finish", list(skipped)))
        return {"count": 3}


class _Backend(StoreBackend):
    name = "fake"

    def __init__(self, wants: int):
        self.made = _Writer(wants)

    def where(self, model):
        return model

    def version(self, model):
        return None

    def open(self, model, dim=None, export_sha256=None):
        raise NotImplementedError

    def writer(self, model, dim, count, index_type, manifest, rerank=False):
        self.made.args = (model, dim, count, index_type)
        return self.made

    def apply(self, model, change):
        raise NotImplementedError

    def pending(self, model):
        return 0

    def compact(self, model):
        return None

    def set_calibration(self, model, calibration):
        raise NotImplementedError


@pytest.mark.parametrize("wants", [0, 2])
def test_write_fills_one_writer_training_it_only_when_it_asks(wants):
    backend = _Backend(wants)
    written = backend.write("m", np.zeros((3, 4), np.float32), [{}] * 3, {}, [("bad.png", "empty")], "flat")
    trained = [("train", 3)] if wants else []
    assert written == {"count": 3} and backend.made.args == ("m", 4, 3, "flat")
    assert backend.made.calls == [*trained, ("add", 3, 3), ("finish", [("bad.png", "empty")]), "exit"]


def test_the_interface_factory_and_milvus_backend_load_no_faiss():
    """faiss sets process-wide search thresholds when imported: a Milvus gateway has no use for it."""
    pytest.importorskip("pymilvus")
    code = ("import sys; import cxr.store.interface, cxr.store.factory, cxr.store.milvus.backend; "
            "print('faiss' in sys.modules)")
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "False", child.stderr[-2000:]


def test_a_filter_keys_on_its_meaning_and_hides_its_excluded_patients():
    flt = Filter.of(["Lateral"], exclude_patients=["p9", "p1", "p9", ""], exclude_studies=["s2"])
    assert flt == Filter.of(["Lateral"], exclude_patients=["p1", "p9"], exclude_studies=["s2"])
    assert flt.kept == Filter.of(["Lateral"]) and flt.excludes and Filter.of(exclude_studies=["s"])
    assert "p1" not in repr(flt) and "s2" not in repr(flt)
    assert flt.excluded({"patient_id": "p1"}) and flt.excluded({"study_uid": "s2"})
    assert not flt.excluded({"patient_id": "", "study_uid": ""}) and not Filter()


def test_a_date_range_is_inclusive_and_leaves_out_images_without_a_date():
    flt = Filter.of(date_from="20200101", date_to="20201231")
    assert flt.passes_date("20200101") and flt.passes_date("20201231") and not flt.passes_date("20210101")
    assert not flt.passes_date("") and not flt.passes_date("2020") and Filter().passes_date("")
