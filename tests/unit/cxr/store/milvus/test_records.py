"""Rows as Milvus records: the key an image added by a commit gets, the limits a row is checked
against, and requests cut by size (no server: the records reach Milvus Lite in
tests/integration/cxr/test_milvus_changes.py)."""

import hashlib

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")

from cxr.store.milvus import records  # noqa: E402
from cxr.store.milvus.records import KEY_BASE, MilvusLimitError, RecordBuilder, batches, image_key  # noqa: E402


@pytest.mark.parametrize("image_id", ["0", "1.2.840.113619.2.55.3.604688119", "é/ü", "x" * 512])
def test_an_image_key_is_62_bits_of_its_sha256_above_every_build_position(image_id):
    digest = hashlib.sha256(image_id.encode()).digest()
    expected = (int.from_bytes(digest[:8], "big") % 2**62) + 2**62  # the same, said another way
    assert image_key(image_id) == expected == image_key(image_id)
    assert 2**62 == KEY_BASE <= image_key(image_id) <= np.iinfo(np.int64).max


def test_image_keys_differ_between_images():
    ids = [f"img-{i}" for i in range(20_000)]
    assert len({image_key(i) for i in ids}) == len(ids)
    assert image_key("a") != image_key("A") != image_key("a ")


def test_a_record_carries_its_key_lower_cased_filter_copies_and_the_tally():
    builder = RecordBuilder()
    vector = np.ones(4, np.float32)
    record, size = builder.record(7, vector, {"image_id": "a", "projection": "PA", "labels": ["Mass", "Edema"],
                                              "findings": "é" * 40_000}, "row 0")
    assert (record["id"], record["projection_key"], record["label_keys"]) == (7, "pa", ["mass", "edema"])
    assert record["vector"] is vector and len(record["findings"].encode()) <= 65_535
    builder.record(8, vector, {"image_id": "b", "labels": ["Edema", "Effusion"]}, "row 1")
    assert list(builder.labels) == ["Mass", "Edema", "Effusion"] and list(builder.projections) == ["PA"]
    assert builder.truncated == 1 and builder.bytes > size > vector.nbytes


@pytest.mark.parametrize("row, what", [
    ({"image_id": "i" * 513}, "image_id of 513 bytes; the milvus backend stores at most 512 bytes"),
    ({"image_id": "a", "labels": ["x" * 257]}, "a label of 257 bytes"),
    ({"image_id": "a", "labels": [str(i) for i in range(257)]}, "257 labels"),
])
def test_a_row_too_long_names_itself_and_the_limit(row, what):
    with pytest.raises(MilvusLimitError, match="row 3 of the change .* has " + what):
        RecordBuilder().record(1, np.zeros(4, np.float32), row, "row 3 of the change")


def test_records_go_in_requests_of_about_insert_bytes(monkeypatch):
    monkeypatch.setattr(records, "INSERT_BYTES", 100)
    sized = [({"n": i}, 40) for i in range(7)]
    assert [[r["n"] for r in batch] for batch in batches(iter(sized))] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([])) == []
