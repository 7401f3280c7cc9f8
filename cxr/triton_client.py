"""Embed images and texts through Triton's gRPC API: the served towers, seen from a client.

One client per process; `embed_images` takes uint8 RGB at the model's size, `embed_texts`
takes the exported tokenizer's output. Both return L2-normalised float32 [n, dim].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from cxr.towers import TowerSpec

TRITON_DTYPES = {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}
# The header that unlocks Triton's restricted APIs (--grpc-restricted-protocol / --http-restricted-api):
# model-repository (load/unload), model-config, shared-memory, statistics, trace and logging. Health,
# metadata and inference stay open to loopback clients such as the index builder.
ADMIN_KEY = "cxr-triton-admin"
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_KEY  # Triton's prefix for restricted gRPC headers
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def connection(settings, url: str | None = None) -> dict:
    """Keyword arguments for tritonclient's InferenceServerClient (sync or asyncio): the URL (`url`, one
    of settings.triton_endpoints, else the default triton_host:triton_grpc_port), and TLS when
    triton_tls_ca is set (with a client certificate when triton_tls_cert is). Every endpoint shares
    the TLS files: replicas of one deployment, signed by one CA."""
    kwargs = {"url": url or settings.triton_grpc_url}
    if settings.triton_tls_ca:
        kwargs.update(ssl=True, root_certificates=str(settings.triton_tls_ca))
        if settings.triton_tls_cert:
            kwargs.update(certificate_chain=str(settings.triton_tls_cert), private_key=str(settings.triton_tls_key))
    return kwargs


def admin_headers(key_file: Path) -> dict[str, str]:
    """The gRPC header for Triton's restricted APIs, when this machine holds the key `cxr serve` wrote."""
    try:
        return {GRPC_ADMIN_HEADER: key_file.read_text().strip()}
    except OSError:
        return {}


def infer_inputs(tower: TowerSpec, arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """Triton request inputs for `tower` (the sync and the asyncio clients share this class)."""
    inputs = []
    for tensor in tower.inputs:
        array = np.ascontiguousarray(arrays[tensor.name], dtype=tensor.dtype)
        if not tensor.accepts(array.shape[1:]):
            raise ValueError(f"{tower.triton_name}.{tensor.name}: shape {array.shape[1:]} past the batch axis, "
                             f"expected {tensor.dims}")
        infer_input = grpcclient.InferInput(tensor.name, list(array.shape), TRITON_DTYPES[tensor.dtype])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


class TowerClient:
    def __init__(self, connection: dict, image: TowerSpec, text: TowerSpec, max_batch_size: int):
        self._client = grpcclient.InferenceServerClient(**connection)
        self.image = image
        self.text = text
        self.max_batch_size = max_batch_size

    def _infer(self, tower: TowerSpec, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """One request per max_batch_size rows: Triton rejects larger batches."""
        count = len(next(iter(arrays.values())))
        parts = [self._infer_batch(tower, {name: a[start:start + self.max_batch_size] for name, a in arrays.items()})
                 for start in range(0, count, self.max_batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, *tower.output.dims), np.float32)

    def _infer_batch(self, tower: TowerSpec, arrays: dict[str, np.ndarray]) -> np.ndarray:
        outputs = [grpcclient.InferRequestedOutput(tower.output.name)]
        result = self._client.infer(tower.triton_name, infer_inputs(tower, arrays), outputs=outputs)
        return result.as_numpy(tower.output.name)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._infer(self.image, {self.image.inputs[0].name: pixels})

    def embed_texts(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        return self._infer(self.text, tokens)

    def close(self) -> None:
        self._client.close()
