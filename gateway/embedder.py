"""The thing that embeds: text and images to L2-normalised vectors through Triton (gRPC, asyncio).

One Triton or several (settings.triton_endpoints): gateway.triton_pool balances the calls, ejects
an endpoint that cannot be reached and tries the call on another. Each channel reconnects by
itself, so when a Triton comes back after a restart, queries succeed again without restarting
the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferRequestedOutput
from tritonclient.utils import InferenceServerException

from cxr.catalog import ExportedModel
from cxr.errors import CxrError
from cxr.towers import TowerSpec
from cxr.triton_client import infer_inputs
from gateway import calls
from gateway.embedding import Embedder
from gateway.metrics import GatewayMetrics
from gateway.text_cache import TextEmbeddingCache
from gateway.triton_pool import Endpoint, EndpointPool

# Triton's default gRPC message limit is 4 MB; a batch of 448 px uint8 images needs more.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# gRPC waits up to 120 s between reconnection attempts to a Triton that was down: capped, so a
# Triton back from a restart is seen (and re-admitted) within seconds.
MAX_RECONNECT_BACKOFF_MS = 2000
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
# Health looks are bounded so that one endpoint that stopped answering cannot stall the health loop.
READY_TIMEOUT_S = 2.0


class TritonUnavailableError(CxrError):
    """Triton cannot be reached or its model is not ready."""


class TritonEndpointDownError(TritonUnavailableError):
    """One endpoint cannot be reached or lacks the model: another endpoint may answer."""


class TritonFailedError(CxrError):
    """Triton answered with an error other than unavailability."""


class TritonEmbedder(Embedder):
    def __init__(self, connections: Sequence[dict], metrics: GatewayMetrics | None = None,
                 text_cache_entries: int = 0):
        """`connections`: cxr.triton_client.connection(settings, url) for each of settings.triton_endpoints."""
        endpoints = [Endpoint(c["url"], aioclient.InferenceServerClient(**c, channel_args=CHANNEL_OPTIONS))
                     for c in connections]
        self.url = ", ".join(e.url for e in endpoints)
        self.pool = EndpointPool(endpoints, _server_ready, TritonEndpointDownError, metrics)
        self.text_cache = TextEmbeddingCache(text_cache_entries, metrics)

    async def embed_texts(self, model: ExportedModel, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """One vector per text; texts embedded before (by this export) come from the cache."""
        vectors = [self.text_cache.get(model, text) for text in texts]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if missing:
            with calls.stage("tokenize"):
                tokens = model.tokenizer([texts[i] for i in missing])
            for i, vector in zip(missing, await self._infer(model.text, tokens, timeout)):
                self.text_cache.put(model, texts[i], vector)
                vectors[i] = vector
        return np.stack(vectors)

    async def embed_images(self, model: ExportedModel, pixels: np.ndarray, timeout: float | None = None) -> np.ndarray:
        return await self._infer(model.image, {model.image.inputs[0].name: pixels}, timeout)

    async def _infer(self, tower: TowerSpec, arrays: dict[str, np.ndarray], timeout: float | None) -> np.ndarray:
        inputs = infer_inputs(tower, arrays)  # built once, whichever endpoint answers
        outputs = [InferRequestedOutput(tower.output.name)]

        async def attempt(endpoint: Endpoint, seconds_left: float | None):
            try:
                return await endpoint.client.infer(tower.triton_name, inputs, outputs=outputs,
                                                   client_timeout=seconds_left)
            except InferenceServerException as exc:
                raise _translate(exc, tower.triton_name, endpoint.url) from exc

        with calls.stage("triton"):
            result = await self.pool.call(attempt, timeout)
        return result.as_numpy(tower.output.name)

    async def is_ready(self, model: ExportedModel) -> bool:
        """True when at least one endpoint has both of the model's towers ready."""
        return any(await asyncio.gather(*(_model_ready(e, model) for e in self.pool.endpoints)))

    async def close(self) -> None:
        await self.pool.close()
        for endpoint in self.pool.endpoints:
            await endpoint.client.close()


async def _model_ready(endpoint: Endpoint, model: ExportedModel) -> bool:
    try:
        return all([await endpoint.client.is_model_ready(model.image.triton_name, client_timeout=READY_TIMEOUT_S),
                    await endpoint.client.is_model_ready(model.text.triton_name, client_timeout=READY_TIMEOUT_S)])
    except InferenceServerException:
        return False


async def _server_ready(endpoint: Endpoint) -> bool:
    """Re-admission asks Triton's server readiness: with Triton's default --strict-readiness it holds
    only while every model of the repository is ready, whichever model the failed call wanted."""
    return await endpoint.client.is_server_ready(client_timeout=READY_TIMEOUT_S)


def _translate(exc: InferenceServerException, triton_name: str, url: str) -> CxrError:
    status = str(exc.status() or "")
    if "UNAVAILABLE" in status or "not ready" in str(exc.message()) or "unknown model" in str(exc.message()):
        return TritonEndpointDownError(f"Triton at {url} cannot serve {triton_name} right now ({exc.message()}); "
                                       "retry shortly, or start it with `make serve`")
    if "DEADLINE_EXCEEDED" in status:
        return TritonUnavailableError(f"Triton did not answer for {triton_name} within the deadline")
    return TritonFailedError(f"Triton failed on {triton_name}: {exc.message()}")
