"""What a request to Triton carries: the connection's arguments, the admin header and the input tensors.

The asyncio client, its synchronous face, the server process's readiness wait and the CLI's health
look all build their requests here, so that Triton's dtypes, TLS files and restricted-API header are
named once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from cxr.towers import TowerSpec
from cxr.triton.errors import TritonTlsFileError

TRITON_DTYPES = {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}
# The header that unlocks Triton's restricted APIs (--grpc-restricted-protocol / --http-restricted-api):
# model-repository (load/unload), model-config, shared-memory, statistics, trace and logging. Health,
# metadata and inference stay open to loopback clients such as the index builder.
ADMIN_KEY = "cxr-triton-admin"
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_KEY  # Triton's prefix for restricted gRPC headers
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def connection(settings, url: str | None = None, server_name: str | None = None) -> dict:
    """Keyword arguments for tritonclient's InferenceServerClient (sync or asyncio): the URL (`url`, one
    of settings.triton_endpoints, else the default triton_host:triton_grpc_port), and TLS when
    triton_tls_ca is set (with a client certificate when triton_tls_cert is). Every endpoint shares
    the TLS files: replicas of one deployment, signed by one CA. `server_name`: the name Triton's
    certificate is checked against where `url` is an address (endpoints found in DNS), as
    `channel_args` to add to the client's own."""
    kwargs: dict = {"url": url or settings.triton_grpc_url}
    if settings.triton_tls_ca:
        _check_tls_files(settings)
        kwargs.update(ssl=True, root_certificates=str(settings.triton_tls_ca))
        if settings.triton_tls_cert:
            kwargs.update(certificate_chain=str(settings.triton_tls_cert), private_key=str(settings.triton_tls_key))
        if server_name:
            kwargs["channel_args"] = [("grpc.ssl_target_name_override", server_name)]
    return kwargs


def _check_tls_files(settings) -> None:
    """tritonclient opens the TLS files as it makes a client and lets the OSError out: say which setting is wrong."""
    for name in ("triton_tls_ca", "triton_tls_cert", "triton_tls_key"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise TritonTlsFileError(f"{name} = {path}: no such file; point {name} (CXR_{name.upper()}) at the PEM "
                                     "file of the TLS material Triton's gRPC port uses, or unset triton_tls_ca for a "
                                     "Triton in plaintext on loopback")


def connections(settings) -> list[dict]:
    """One connection per Triton endpoint of the settings (triton_urls, or the single default)."""
    return [connection(settings, url) for url in settings.triton_endpoints]


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


def requested_outputs(tower: TowerSpec) -> list[grpcclient.InferRequestedOutput]:
    """The one output a tower's request asks for: its embeddings."""
    return [grpcclient.InferRequestedOutput(tower.output.name)]
