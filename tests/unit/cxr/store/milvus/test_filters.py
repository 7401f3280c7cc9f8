"""Filter values are Milvus string literals, escaped, never pasted into an expression."""

import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")

from cxr.store.milvus.filters import literal  # noqa: E402


def test_filter_values_are_quoted_as_milvus_literals():
    assert literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
