"""The thing that embeds: text and images to L2-normalised vectors through Triton (gRPC, asyncio).

Triton itself, its endpoints and their failover are cxr.triton.client's; this adds what the gateway
needs on top: the text cache, the "tokenize" and "triton" stages of each call's timing, and the
endpoints' up/ejected series in the gateway's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cxr.catalog import ExportedModel
from cxr.triton.client import AsyncTowerClient
from cxr.triton.discovery import DnsTarget
from cxr.triton.pool import PoolObserver
from gateway import calls
from gateway.embedding import Embedder
from gateway.metrics import GatewayMetrics
from gateway.text_cache import TextEmbeddingCache

log = logging.getLogger("cxr.gateway")


class EndpointMetrics(PoolObserver):
    """The pool's news as two series per endpoint: up (1 in rotation, 0 ejected) and ejections."""

    def __init__(self, metrics: GatewayMetrics):
        self._metrics = metrics

    def joined(self, url: str) -> None:
        self._metrics.triton_endpoint_up.labels(url).set(1)
        self._metrics.triton_ejections.labels(url)  # at 0 from the start, for increase()

    def ejected(self, url: str) -> None:
        self._metrics.triton_endpoint_up.labels(url).set(0)
        self._metrics.triton_ejections.labels(url).inc()

    def readmitted(self, url: str) -> None:
        self._metrics.triton_endpoint_up.labels(url).set(1)

    def left(self, url: str) -> None:
        # Pod addresses come and go with the autoscaler: series of endpoints gone would pile up.
        self._metrics.triton_endpoint_up.remove(url)
        self._metrics.triton_ejections.remove(url)


class TritonEmbedder(Embedder):
    def __init__(self, connections: Sequence[dict], metrics: GatewayMetrics | None = None,
                 text_cache_entries: int = 0, dns: DnsTarget | None = None):
        """`connections`: cxr.triton.request.connections(settings), one per endpoint; `dns`: the name whose
        addresses replace them (cxr.triton.discovery.dns_target(settings)), or None."""
        observer = EndpointMetrics(metrics) if metrics is not None else None
        self.client = AsyncTowerClient(connections, observer, logger=log, dns=dns)
        self.url = self.client.url
        self.text_cache = TextEmbeddingCache(text_cache_entries, metrics)

    async def embed_texts(self, model: ExportedModel, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """One vector per text; texts embedded before (by this export) come from the cache."""
        vectors = [self.text_cache.get(model, text) for text in texts]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if missing:
            with calls.stage("tokenize"):
                tokens = model.tokenizer([texts[i] for i in missing])
            with calls.stage("triton"):
                embedded = await self.client.embed_tokens(model.text, tokens, timeout)
            for i, vector in zip(missing, embedded):
                self.text_cache.put(model, texts[i], vector)
                vectors[i] = vector
        return np.stack(vectors)

    async def embed_images(self, model: ExportedModel, pixels: np.ndarray, timeout: float | None = None) -> np.ndarray:
        with calls.stage("triton"):
            return await self.client.embed_images(model.image, pixels, timeout)

    async def is_ready(self, model: ExportedModel) -> bool:
        """True when at least one endpoint has both of the model's towers ready."""
        return await self.client.is_ready(model.image, model.text)

    async def close(self) -> None:
        await self.client.close()
