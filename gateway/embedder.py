"""The thing that embeds: text and images to L2-normalised vectors through Triton (gRPC, asyncio).

The channel reconnects by itself, so when Triton comes back after a restart, queries succeed
again without restarting the gateway.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferRequestedOutput
from tritonclient.utils import InferenceServerException

from cxr.catalog import ExportedModel
from cxr.errors import CxrError
from cxr.towers import TowerSpec
from cxr.triton_client import infer_inputs
from gateway import calls

# Triton's default gRPC message limit is 4 MB; a batch of 448 px uint8 images needs more.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class TritonUnavailableError(CxrError):
    """Triton cannot be reached or its model is not ready."""


class TritonFailedError(CxrError):
    """Triton answered with an error other than unavailability."""


class TritonEmbedder:
    def __init__(self, connection: dict):
        """`connection`: cxr.triton_client.connection(settings), the URL and TLS files."""
        self.url = connection["url"]
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._client = aioclient.InferenceServerClient(**connection, channel_args=options)

    async def embed_texts(self, model: ExportedModel, texts: list[str], timeout: float | None = None) -> np.ndarray:
        with calls.stage("tokenize"):
            tokens = model.tokenizer(texts)
        return await self._infer(model.text, tokens, timeout)

    async def embed_images(self, model: ExportedModel, pixels: np.ndarray, timeout: float | None = None) -> np.ndarray:
        return await self._infer(model.image, {model.image.inputs[0].name: pixels}, timeout)

    async def _infer(self, tower: TowerSpec, arrays: dict[str, np.ndarray], timeout: float | None) -> np.ndarray:
        try:
            with calls.stage("triton"):
                result = await self._client.infer(tower.triton_name, infer_inputs(tower, arrays),
                                                  outputs=[InferRequestedOutput(tower.output.name)],
                                                  client_timeout=timeout)
        except InferenceServerException as exc:
            raise _translate(exc, tower.triton_name, self.url) from exc
        return result.as_numpy(tower.output.name)

    async def is_ready(self, model: ExportedModel) -> bool:
        try:
            return all([await self._client.is_model_ready(model.image.triton_name),
                        await self._client.is_model_ready(model.text.triton_name)])
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()


def _translate(exc: InferenceServerException, triton_name: str, url: str) -> CxrError:
    status = str(exc.status() or "")
    if "UNAVAILABLE" in status or "not ready" in str(exc.message()) or "unknown model" in str(exc.message()):
        return TritonUnavailableError(f"Triton at {url} cannot serve {triton_name} right now ({exc.message()}); "
                                      "retry shortly, or start it with `make serve`")
    if "DEADLINE_EXCEEDED" in status:
        return TritonUnavailableError(f"Triton did not answer for {triton_name} within the deadline")
    return TritonFailedError(f"Triton failed on {triton_name}: {exc.message()}")
