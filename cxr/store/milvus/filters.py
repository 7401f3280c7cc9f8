"""A query's Filter as an expression of Milvus's filter language, on the lower-cased copies of
projection and labels that every row carries (filters ignore case), on study_date (YYYYMMDD text, which
orders as the dates do), and on patient_id and study_uid for exclusions (identifiers: exact)."""

from __future__ import annotations

from cxr.store.interface import STUDY_KEYS, Filter
from cxr.store.milvus.schema import LABEL_KEYS, PROJECTION_KEY

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def literal(text: str) -> str:
    """A string literal of Milvus's filter language (Milvus Lite ignores filter templates)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _list(values) -> str:
    return "[" + ", ".join(literal(v) for v in sorted({v.lower() for v in values})) + "]"


def filter_expression(flt: Filter) -> str:
    """Any of the labels and any of the projections, on the lower-cased copies; the date range; none of
    the excluded patients and studies. Holds patient ids: never logged."""
    parts = []
    if flt.labels:
        parts.append(f"array_contains_any({LABEL_KEYS}, {_list(flt.labels)})")
    if flt.projections:
        parts.append(f"{PROJECTION_KEY} in {_list(flt.projections)}")
    if flt.dated:  # an image without a date ("") is left out whichever bound is set
        parts.append('study_date != ""')
        parts += [f"study_date {op} {literal(day)}" for op, day in ((">=", flt.date_from), ("<=", flt.date_to)) if day]
    columns = [("patient_id", flt.exclude_patients)] + [(key, flt.exclude_studies) for key in STUDY_KEYS]
    for column, values in columns:
        if values:
            parts.append(f"{column} not in [{', '.join(literal(v) for v in sorted(values))}]")
    return " and ".join(parts)
