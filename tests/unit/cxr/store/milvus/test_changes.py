"""A change is checked against the build before anything is written, and its filters quote their
values (no server: commits on Milvus Lite are tests/integration/cxr/test_milvus_changes.py)."""

import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")

from cxr.store.errors import IndexMismatchError  # noqa: E402
from cxr.store.interface import Change  # noqa: E402
from cxr.store.milvus import changes  # noqa: E402
from support import unit_vectors  # noqa: E402

MANIFEST = {"model": "m", "dim": 8, "export_sha256": "0123456789abcdef"}


def test_a_change_of_the_build_s_dimension_and_export_passes():
    rows = ({"image_id": "a"},)
    changes.check_change("here", MANIFEST, Change(unit_vectors(1, 8), rows, export_sha256="0123456789abcdef"))
    changes.check_change("here", MANIFEST, Change(image_ids=("a",)))  # no vectors: nothing to check


@pytest.mark.parametrize("change, message", [
    (Change(unit_vectors(1, 9), ({"image_id": "a"},), export_sha256="0123456789abcdef"), r"shape \(1, 9\).* 8-d"),
    (Change(unit_vectors(1, 8), ({"image_id": "a"},), export_sha256="fffff"),
     "export sha256 fffff… .* 0123456789ab…"),
    (Change(unit_vectors(1, 8), ({"image_id": "a"},)), r"\(none\)"),
])
def test_a_change_of_another_dimension_or_export_is_refused_naming_the_remedy(change, message):
    with pytest.raises(IndexMismatchError, match=message) as refused:
        changes.check_change("here", MANIFEST, change)
    assert str(refused.value).startswith("here: ") and "cxr index build --model m" in str(refused.value)


def test_filters_quote_strings_and_keep_keys_numbers():
    assert changes._in("image_id", ['a"b', "c\\d"]) == r'image_id in ["a\"b", "c\\d"]'
    assert changes._in("id", [1, 2**62]) == f"id in [1, {2**62}]"


def test_values_go_in_chunks_without_repeats(monkeypatch):
    monkeypatch.setattr(changes, "VALUES_PER_FILTER", 2)
    assert changes._chunks(["a", "b", "a", "c"]) == [["a", "b"], ["c"]] and changes._chunks(()) == []


def test_pending_rows_are_the_rows_added_and_deleted():
    assert changes.pending_rows({}) == 0 and changes.pending_rows({"rows_added": 3, "rows_deleted": 2}) == 5
