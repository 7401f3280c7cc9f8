"""Index files are replaced atomically; an index of another model or dimension is refused."""

import numpy as np
import pytest

from cxr import index_store


def _vectors(n=30, dim=24, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _metadata(n):
    return [{"image_id": str(i), "study_uid": f"s{i // 2}", "projection": ("Frontal", "Lateral")[i % 2],
             "labels": [("Effusion", "No Finding", "Mass")[i % 3]]} for i in range(n)]


def test_a_new_index_replaces_the_old_one_whole(tmp_path):
    index_store.write(tmp_path / "idx", _vectors(30), _metadata(30), {"model": "m"}, [], "flat")
    index_store.write(tmp_path / "idx", _vectors(40, seed=1), _metadata(40), {"model": "m"}, [("x.png", "empty")], "hnsw")
    loaded = index_store.load(tmp_path / "idx")
    assert (loaded.index.ntotal, len(loaded.metadata), loaded.manifest["index_type"]) == (40, 40, "hnsw")
    assert loaded.manifest["skipped"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_an_index_of_another_model_or_dimension_is_refused_naming_both(tmp_path):
    index_store.write(tmp_path / "idx", _vectors(30), _metadata(30), {"model": "siglip"}, [], "flat")
    with pytest.raises(index_store.IndexMismatchError, match=r"siglip \(24-d\).*medsiglip \(1152-d\).*--model medsiglip"):
        index_store.load(tmp_path / "idx", model="medsiglip", dim=1152)
