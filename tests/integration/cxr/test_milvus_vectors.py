"""MilvusStore.vectors on Milvus Lite: the stored vectors of archived images by id, in the order asked, from
the build and from a commit; ids not indexed are named."""

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="these tests run Milvus Lite (pip install milvus-lite)")

from cxr.store.errors import ImagesNotFoundError  # noqa: E402
from cxr.store.interface import Change  # noqa: E402
from support import MilvusLiteFile, index_metadata, unit_vectors  # noqa: E402

MODEL, N, DIM = "m-1", 120, 24
MANIFEST = {"model": MODEL, "export_sha256": "abc"}


@pytest.fixture
def lite(tmp_path):
    with MilvusLiteFile(tmp_path / "milvus.db", drop_grace_s=0) as backend:
        yield backend


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_vectors_are_the_stored_ones_in_the_order_asked(lite, index_type):
    vectors = unit_vectors(N, DIM)
    lite.write(MODEL, vectors, index_metadata(N), MANIFEST, [], index_type)
    store = lite.open(MODEL, dim=DIM, export_sha256="abc")
    found = store.vectors(["9", "0", "119", "9"])
    assert found.dtype == np.float32 and found.shape == (4, DIM)
    np.testing.assert_allclose(found, vectors[[9, 0, 119, 9]], atol=1e-6)
    assert store.vectors([]).shape == (0, DIM)
    with pytest.raises(ImagesNotFoundError) as caught:
        store.vectors(["1", "absent", "x" * 600])
    assert caught.value.missing == ["absent", "x" * 600]


def test_a_committed_image_gives_its_vector(lite):
    lite.write(MODEL, unit_vectors(N, DIM), index_metadata(N), MANIFEST, [], "flat")
    store = lite.open(MODEL, dim=DIM, export_sha256="abc")
    added = unit_vectors(1, DIM, seed=9)
    row = {"image_id": "new", "study_uid": "sn", "projection": "Frontal", "labels": ["Mass"]}
    lite.apply(MODEL, Change(added, (row,), export_sha256="abc"))
    store.refresh()
    np.testing.assert_allclose(store.vectors(["new"]), added, atol=1e-6)
