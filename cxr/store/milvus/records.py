"""Rows as Milvus records, checked against the collection's limits (schema.py) and tallied for the
manifest (labels, projections, bytes, reports cut); and the primary key of an image a commit adds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from cxr.errors import InvalidArgumentError
from cxr.store.image_table import TEXT_COLUMNS
from cxr.store.milvus.schema import (
    FIELD_BYTES,
    ID,
    LABEL_BYTES,
    LABEL_KEYS,
    MAX_LABELS,
    PROJECTION_KEY,
    REPORT_BYTES,
    REPORT_COLUMNS,
    VECTOR,
    cut,
)

INSERT_BYTES = 8 << 20  # per insert or upsert request, well under Milvus's 64 MB message limit
KEY_BASE = 1 << 62  # a build numbers its rows 0..n-1; images added later get keys from here up


class MilvusLimitError(InvalidArgumentError, ValueError):
    """A row does not fit the collection's fields."""


def image_key(image_id: str) -> int:
    """The primary key of an image a commit adds: the same for every commit, so that adding the image
    again replaces it (an upsert) rather than adding a second row. 62 bits of its sha256 with bit 62
    set: at least 2**62, so never a build's position id, and within int64. Two images of a million
    share a key with odds of about 1 in 10**7 (a commit refuses the second: MilvusLimitError)."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (KEY_BASE - 1) | KEY_BASE


class RecordBuilder:
    """Builds records and keeps, over every record it built, what a manifest says of them: the labels
    and projections (first-seen order, as TableWriter keeps them), the bytes and the reports cut."""

    def __init__(self):
        self.labels: dict[str, None] = {}
        self.projections: dict[str, None] = {}
        self.bytes = 0
        self.truncated = 0

    def record(self, key: int, vector: np.ndarray, row: dict, name: str) -> tuple[dict, int]:
        """The record of `row` under primary key `key`, and its size; `name` says which row it is in errors."""
        record = {ID: key, VECTOR: vector}
        for column in TEXT_COLUMNS:
            record[column] = self._text(column, row, name)
        projection = self._text("projection", row, name)
        labels = [self._label(str(label), row, name) for label in row.get("labels") or ()]
        if len(labels) > MAX_LABELS:
            raise _too_long(row, name, f"{len(labels)} labels", f"{MAX_LABELS}")
        record.update(projection=projection, labels=labels, **{PROJECTION_KEY: projection.lower(),
                                                                LABEL_KEYS: [label.lower() for label in labels]})
        if projection:
            self.projections.setdefault(projection)
        self.labels.update(dict.fromkeys(labels))
        texts = [v for v in record.values() if isinstance(v, str)] + labels * 2
        size = vector.nbytes + 8 + sum(len(text.encode()) for text in texts)
        self.bytes += size
        return record, size

    def _text(self, column: str, row: dict, name: str) -> str:
        text = str(row.get(column) or "")
        if column in REPORT_COLUMNS:
            text, was_cut = cut(text, REPORT_BYTES)
            self.truncated += was_cut
            return text
        if len(text.encode()) > FIELD_BYTES[column]:
            raise _too_long(row, name, f"{column} of {len(text.encode())} bytes", f"{FIELD_BYTES[column]} bytes")
        return text

    @staticmethod
    def _label(label: str, row: dict, name: str) -> str:
        if len(label.encode()) > LABEL_BYTES:
            raise _too_long(row, name, f"a label of {len(label.encode())} bytes", f"{LABEL_BYTES} bytes")
        return label


def batches(records: Iterable[tuple[dict, int]]) -> Iterator[list[dict]]:
    """(record, size) pairs, built as they are taken, in requests of about INSERT_BYTES each."""
    batch, size = [], 0
    for record, record_bytes in records:
        batch.append(record)
        size += record_bytes
        if size >= INSERT_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _too_long(row: dict, name: str, what: str, limit: str) -> MilvusLimitError:
    return MilvusLimitError(f"{name} ({str(row.get('image_id'))[:80]!r}) has {what}; the milvus backend stores at "
                            f"most {limit}: shorten it in the archive's metadata, or use the faiss backend")
