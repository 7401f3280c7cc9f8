"""FaissStore.vectors: the stored vector of an archived image, for a search by image_id and for relevance
feedback, from every kind of build and from the rows commits added since."""

import numpy as np
import pytest

from cxr.store.errors import ImagesNotFoundError
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from support import index_metadata, unit_vectors

MODEL, DIM, N = "m", 16, 400
MANIFEST = {"model": MODEL, "dim": DIM, "export_sha256": "e1"}


def _built(tmp_path, index_type: str, rerank: bool = False):
    backend = FaissBackend(tmp_path / "indexes")
    vectors = unit_vectors(N, DIM)
    backend.write(MODEL, vectors, index_metadata(N), MANIFEST, [], index_type, rerank=rerank)
    return backend, vectors


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_a_build_of_full_vectors_gives_them_back_exactly_in_the_order_asked(tmp_path, index_type):
    backend, vectors = _built(tmp_path, index_type)
    store = backend.open(MODEL)
    found = store.vectors(["7", "0", "399", "7"])
    assert found.dtype == np.float32 and found.shape == (4, DIM)
    np.testing.assert_allclose(found, vectors[[7, 0, 399, 7]], atol=1e-6)


# 400 random 16-d vectors train 4-bit PQ codes poorly: approximate indeed (random pairs: 0 +- 0.25)
@pytest.mark.parametrize("index_type, rerank, closeness", [("sq8", False, 0.99), ("ivfpq", False, 0.6),
                                                           ("opq", False, 0.6), ("sq8", True, 0.9999)])
def test_a_quantised_build_gives_normalised_vectors_near_the_originals(tmp_path, index_type, rerank, closeness):
    backend, vectors = _built(tmp_path, index_type, rerank)
    found = backend.open(MODEL).vectors([str(i) for i in range(0, N, 37)])
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    similarity = np.sum(found * vectors[::37], axis=1)
    assert similarity.mean() > closeness and similarity.min() > 0.3
    # among the 5 % of originals nearest to it, even when approximate
    ranks = (found @ vectors.T > similarity[:, None]).sum(axis=1)
    assert (ranks < N // 20).all()


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_rows_added_and_replaced_by_commits_give_their_committed_vectors(tmp_path, index_type):
    backend, vectors = _built(tmp_path, index_type)
    store = backend.open(MODEL)
    added = unit_vectors(2, DIM, seed=5)
    rows = ({"image_id": "new", "study_uid": "sn", "projection": "Frontal", "labels": ["Mass"]},
            {"image_id": "3", "study_uid": "s1", "projection": "Frontal", "labels": ["Mass"]})  # replaces 3
    backend.apply(MODEL, Change(added, rows, export_sha256="e1"))
    backend.apply(MODEL, Change(image_ids=("5",)))
    assert store.refresh()
    np.testing.assert_allclose(store.vectors(["new", "3", "4"]), np.stack([added[0], added[1], vectors[4]]),
                               atol=1e-6)
    with pytest.raises(ImagesNotFoundError) as caught:
        store.vectors(["4", "5", "absent"])  # 5 was deleted
    assert caught.value.missing == ["5", "absent"]


def test_no_ids_give_an_empty_array(tmp_path):
    backend, _ = _built(tmp_path, "flat")
    assert backend.open(MODEL).vectors([]).shape == (0, DIM)
