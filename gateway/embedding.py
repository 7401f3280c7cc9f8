"""What the Retrieval service needs of whatever embeds its queries: Triton in production
(gateway.embedder.TritonEmbedder), a fake in tests (`create_server(embedder=...)`)."""

from __future__ import annotations

import abc

import numpy as np

from cxr.catalog import ExportedModel


class Embedder(abc.ABC):
    @abc.abstractmethod
    async def embed_texts(self, model: ExportedModel, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """One L2-normalised float32 vector per text, [len(texts), model's dim]."""

    @abc.abstractmethod
    async def embed_images(self, model: ExportedModel, pixels: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """One L2-normalised float32 vector per image of `pixels` (uint8 [n, size, size, 3])."""

    @abc.abstractmethod
    async def is_ready(self, model: ExportedModel) -> bool:
        """True while queries for `model` can be embedded."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; called once, when the gateway stops."""
