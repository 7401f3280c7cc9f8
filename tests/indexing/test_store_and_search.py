"""Index files are replaced atomically; filtered search returns the true top k among allowed ids."""

import numpy as np
import pytest

from indexing import store
from indexing.search import IndexSearcher, UnknownFilterError


def _vectors(n=600, dim=24, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _metadata(n):
    return [{"image_id": str(i), "study_uid": f"s{i // 2}", "projection": ("Frontal", "Lateral")[i % 2],
             "labels": [("Effusion", "No Finding", "Mass")[i % 3]]} for i in range(n)]


@pytest.mark.parametrize("index_type", store.INDEX_TYPES)
def test_filtered_search_equals_brute_force_over_the_allowed_ids(tmp_path, index_type):
    vectors = _vectors()
    store.write(tmp_path / "idx", vectors, _metadata(len(vectors)), {"model": "m"}, [], index_type)
    searcher = IndexSearcher(store.load(tmp_path / "idx", "m", 24))
    query = vectors[7]
    allowed = [i for i in range(len(vectors)) if i % 2 == 1 and i % 3 == 2]  # Lateral and Mass
    expected = sorted(allowed, key=lambda i: -float(vectors[i] @ query))[:10]
    hits = searcher.search(query, 10, projections=["lateral"], labels=["Mass"])
    assert [i for i, _ in hits] == expected if index_type == "flat" else len(set(i for i, _ in hits) - set(allowed)) == 0
    assert searcher.search(query, 1)[0][0] == 7


def test_top_k_larger_than_the_index_returns_everything(tmp_path):
    vectors = _vectors(20)
    store.write(tmp_path / "idx", vectors, _metadata(20), {"model": "m"}, [], "flat")
    assert len(IndexSearcher(store.load(tmp_path / "idx")).search(vectors[0], 1000)) == 20


def test_unknown_filter_lists_the_known_values(tmp_path):
    store.write(tmp_path / "idx", _vectors(30), _metadata(30), {"model": "m"}, [], "flat")
    with pytest.raises(UnknownFilterError, match="Effusion"):
        IndexSearcher(store.load(tmp_path / "idx")).search(_vectors(1)[0], 5, labels=["Pneumonia"])


def test_a_new_index_replaces_the_old_one_whole(tmp_path):
    store.write(tmp_path / "idx", _vectors(30), _metadata(30), {"model": "m"}, [], "flat")
    store.write(tmp_path / "idx", _vectors(40, seed=1), _metadata(40), {"model": "m"}, [("x.png", "empty")], "hnsw")
    loaded = store.load(tmp_path / "idx")
    assert (loaded.index.ntotal, len(loaded.metadata), loaded.manifest["index_type"]) == (40, 40, "hnsw")
    assert loaded.manifest["skipped"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_an_index_of_another_model_or_dimension_is_refused_naming_both(tmp_path):
    store.write(tmp_path / "idx", _vectors(30), _metadata(30), {"model": "siglip"}, [], "flat")
    with pytest.raises(store.IndexMismatchError, match=r"siglip \(24-d\).*medsiglip \(1152-d\).*--model medsiglip"):
        store.load(tmp_path / "idx", model="medsiglip", dim=1152)
