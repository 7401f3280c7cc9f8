"""Index files are replaced atomically; an index of another model or dimension is refused."""

import pytest

from cxr import index_store
from support import index_metadata, unit_vectors


def test_a_new_index_replaces_the_old_one_whole(tmp_path):
    index_store.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    index_store.write(tmp_path / "idx", unit_vectors(40, seed=1), index_metadata(40), {"model": "m"},
                      [("x.png", "empty")], "hnsw")
    loaded = index_store.load(tmp_path / "idx")
    assert (loaded.index.ntotal, len(loaded.metadata), loaded.manifest["index_type"]) == (40, 40, "hnsw")
    assert loaded.manifest["skipped"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_an_index_of_another_model_or_dimension_is_refused_naming_both(tmp_path):
    index_store.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "siglip"}, [], "flat")
    with pytest.raises(index_store.IndexMismatchError, match=r"siglip \(24-d\).*medsiglip \(1152-d\).*--model medsiglip"):
        index_store.load(tmp_path / "idx", model="medsiglip", dim=1152)
