"""`cxr index calibrate`'s fitting, with a real FAISS index and the Triton embedding replaced: a query's own
patient never votes, patients with many images are looked past, and the fitted calibration is kept with the
index."""

from pathlib import Path

import numpy as np
import pytest

from cxr.archives import Record
from cxr.store.faiss_backend import FaissBackend
from indexing import calibration
from indexing.calibration import NothingToCalibrateError

MODEL, DIM = "m", 8


class _Model:
    name, embed_dim, export_sha256 = MODEL, DIM, "e" * 64


def _record(i: int, patient: str, labels=("Effusion",)) -> Record:
    return Record(image_id=f"q{i}", path=Path(f"q{i}.png"), study_uid=f"qs{i}", filename=f"q{i}.png",
                  labels=tuple(labels), patient_id=patient)


@pytest.fixture
def backend(tmp_path):
    """An index whose first 70 images belong to patient p0 and sit right by the query vector; the rest elsewhere."""
    rng = np.random.default_rng(0)
    near = np.tile(np.eye(DIM, dtype=np.float32)[0], (70, 1)) + rng.normal(0, 0.01, (70, DIM)).astype(np.float32)
    far = rng.normal(0, 1, (40, DIM)).astype(np.float32)
    vectors = np.concatenate([near, far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [{"image_id": str(i), "study_uid": f"s{i}", "patient_id": "p0" if i < 70 else f"p{i}",
             "labels": ["Mass"] if i < 70 else ["Effusion"]} for i in range(len(vectors))]
    backend = FaissBackend(tmp_path)
    backend.write(MODEL, vectors, rows, {"model": MODEL, "export_sha256": "e" * 64}, [], "flat")
    return backend


def test_the_query_patients_images_never_vote_however_many_there_are(backend):
    store = backend.open(MODEL)
    query = np.eye(DIM, dtype=np.float32)[:1]
    (mine,) = calibration.neighbours(store, query, [_record(0, "p0")], k=20)
    assert len(mine.labels) == 20 and all(labels == ("Effusion",) for labels in mine.labels)
    assert list(mine.similarities) == sorted(mine.similarities, reverse=True)
    (other,) = calibration.neighbours(store, query, [_record(1, "p-new")], k=20)
    assert all(labels == ("Mass",) for labels in other.labels)  # another patient's query sees p0's images


def test_calibrate_fits_on_the_split_and_keeps_it_with_the_index(backend, monkeypatch):
    rng = np.random.default_rng(1)
    records = [_record(i, f"v{i}", ("Mass",) if i % 2 else ("Effusion",)) for i in range(40)]
    vectors = {i: (np.eye(DIM)[0] if i % 2 else rng.normal(0, 1, DIM)).astype(np.float32) for i in range(40)}
    monkeypatch.setattr(calibration, "embed_records", lambda records, *args, **kwargs: vectors)
    fitted = calibration.calibrate(records, _Model(), None, backend, "test split", grid=(5, 10))
    kept = backend.open(MODEL).calibration
    assert kept == fitted and fitted.k in (5, 10) and set(fitted.maps) == {"Effusion", "Mass"}
    assert fitted.fitted["split"] == "test split" and fitted.fitted["queries"] == 40
    assert fitted.fitted["mean_auc_by_k"]["5"] > 0.9  # Mass queries sit among the Mass images


def test_a_split_without_labels_is_refused(backend):
    with pytest.raises(NothingToCalibrateError, match="no image with finding labels"):
        calibration.calibrate([_record(0, "p", labels=())], _Model(), None, backend, "split")
