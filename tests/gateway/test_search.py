"""Filtered search returns the true top k among the allowed ids."""

import pytest

from cxr import index_store
from gateway.search import IndexSearcher, UnknownFilterError
from support import index_metadata, unit_vectors


@pytest.mark.parametrize("index_type", index_store.INDEX_TYPES)
def test_filtered_search_equals_brute_force_over_the_allowed_ids(tmp_path, index_type):
    vectors = unit_vectors(600)
    index_store.write(tmp_path / "idx", vectors, index_metadata(len(vectors)), {"model": "m"}, [], index_type)
    searcher = IndexSearcher(index_store.load(tmp_path / "idx", "m", 24))
    query = vectors[7]
    allowed = [i for i in range(len(vectors)) if i % 2 == 1 and i % 3 == 2]  # Lateral and Mass
    expected = sorted(allowed, key=lambda i: -float(vectors[i] @ query))[:10]
    hits = searcher.search(query, 10, projections=["lateral"], labels=["Mass"])
    assert [i for i, _ in hits] == expected if index_type == "flat" else len(set(i for i, _ in hits) - set(allowed)) == 0
    assert searcher.search(query, 1)[0][0] == 7


def test_top_k_larger_than_the_index_returns_everything(tmp_path):
    vectors = unit_vectors(20)
    index_store.write(tmp_path / "idx", vectors, index_metadata(20), {"model": "m"}, [], "flat")
    assert len(IndexSearcher(index_store.load(tmp_path / "idx")).search(vectors[0], 1000)) == 20


def test_unknown_filter_lists_the_known_values(tmp_path):
    index_store.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    with pytest.raises(UnknownFilterError, match="Effusion"):
        IndexSearcher(index_store.load(tmp_path / "idx")).search(unit_vectors(1)[0], 5, labels=["Pneumonia"])
