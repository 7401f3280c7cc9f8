"""Text embeddings already computed, kept by model export and text: a repeated query skips Triton.

Clinicians repeat queries ("pleural effusion", "pneumothorax"), so a small LRU cache in front of
the text tower answers many of them at once. The key is the export's text-tower checksum (a
re-export never serves an old vector) and a SHA-256 of the text with its whitespace collapsed (every
family's tokenizer ignores runs of whitespace; tests/unit/gateway/test_text_cache.py checks them): the
cache holds digests, never query text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from cxr.catalog import ExportedModel


def normalised(text: str) -> str:
    return " ".join(text.split())


def _key(model: ExportedModel, text: str) -> bytes:
    export = model.manifest["onnx"][model.text.triton_name]["sha256"]
    return hashlib.sha256(f"{model.name}\0{export}\0{normalised(text)}".encode()).digest()


class TextEmbeddingCache:
    """At most `max_entries` vectors, the least recently used dropped first; 0 turns it off."""

    def __init__(self, max_entries: int, metrics=None):
        self.max_entries = max_entries
        self.metrics = metrics
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, model: ExportedModel, text: str) -> np.ndarray | None:
        if not self.max_entries:
            return None
        key = _key(model, text)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
        self._count(model.name, vector is not None)
        return vector

    def put(self, model: ExportedModel, text: str, vector: np.ndarray) -> None:
        if not self.max_entries:
            return
        vector = np.array(vector, dtype=np.float32)  # a copy, read-only: callers share it
        vector.flags.writeable = False
        with self._lock:
            self._vectors[_key(model, text)] = vector
            self._vectors.move_to_end(_key(model, text))
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)

    def _count(self, model: str, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.text_cache_hits if hit else self.metrics.text_cache_misses).labels(model).inc()
