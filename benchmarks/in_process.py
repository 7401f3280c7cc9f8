"""The design our users would otherwise run (the seed's): the model in-process in PyTorch and
FAISS in the same Python process, no server. Same checkpoint, same preprocessing, same index
files as the gateway, so the comparison is the serving design and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr.images import preprocess
from cxr.registry import ModelSpec
from cxr.settings import Settings
from cxr.store import faiss_store
from export.families import load_encoder
from export.onnx_export import ImageTower, TextTower
from export.repository import resolve_source


class InProcessSearch:
    def __init__(self, spec: ModelSpec, settings: Settings, index_dir: Path):
        self.spec = spec
        self.encoder = load_encoder(spec, resolve_source(spec, settings, None))
        self.image_tower = ImageTower(self.encoder.image_features, spec).eval()
        self.text_tower = TextTower(self.encoder.text_features).eval()
        self.store = faiss_store.load(index_dir)

    @torch.inference_mode()
    def search_text(self, text: str, top_k: int = 10) -> list[dict]:
        tokens = self.encoder.tokenize([text])
        vector = self.text_tower(*(torch.from_numpy(tokens[name]) for name in self.spec.text_inputs))
        return self._search(vector.numpy(), top_k)

    @torch.inference_mode()
    def search_image(self, data: bytes, top_k: int = 10) -> list[dict]:
        pixels = torch.tensor(preprocess(data, self.spec.image_size)[None])  # PIL's array is read-only
        return self._search(self.image_tower(pixels).numpy(), top_k)

    def _search(self, vector: np.ndarray, top_k: int) -> list[dict]:
        """The top hits with their metadata, as the gateway answers."""
        (hits,) = self.store.search(vector.astype(np.float32), top_k)
        return [dict(row, score=score) for row, (_, score) in zip(self.store.rows([i for i, _ in hits]), hits)]
