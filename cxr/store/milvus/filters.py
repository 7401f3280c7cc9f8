"""A query's Filter as an expression of Milvus's filter language, on the lower-cased copies of
projection and labels that every row carries (filters ignore case)."""

from __future__ import annotations

from cxr.store.interface import Filter
from cxr.store.milvus.schema import LABEL_KEYS, PROJECTION_KEY

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def literal(text: str) -> str:
    """A string literal of Milvus's filter language (Milvus Lite ignores filter templates)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _list(values) -> str:
    return "[" + ", ".join(literal(v) for v in sorted({v.lower() for v in values})) + "]"


def filter_expression(flt: Filter) -> str:
    """Any of the labels and any of the projections, on the lower-cased copies."""
    parts = []
    if flt.labels:
        parts.append(f"array_contains_any({LABEL_KEYS}, {_list(flt.labels)})")
    if flt.projections:
        parts.append(f"{PROJECTION_KEY} in {_list(flt.projections)}")
    return " and ".join(parts)
