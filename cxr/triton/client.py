"""Embed through Triton (gRPC, asyncio) over one or several endpoints: the towers, seen from a client.

One Triton or several (settings.triton_endpoints): cxr.triton.pool balances the calls, ejects an
endpoint that cannot be reached and tries the call on another. Each channel reconnects by itself, so
when a Triton comes back after a restart, calls succeed again without a new client. Images go in as
uint8 RGB at the model's size, texts as the exported tokenizer's output; both come back as
L2-normalised float32 [n, dim]. The gateway embeds through this client; index builds through its
synchronous face, cxr.triton.sync_client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from cxr.towers import TowerSpec
from cxr.triton.discovery import DnsEndpoints, DnsTarget
from cxr.triton.errors import TritonEndpointDownError, translate
from cxr.triton.pool import Endpoint, EndpointPool, PoolObserver
from cxr.triton.pool import log as pool_log
from cxr.triton.request import infer_inputs, requested_outputs

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


class AsyncTowerClient:
    def __init__(self, connections: Sequence[dict], observer: PoolObserver | None = None,
                 logger: logging.Logger = pool_log, dns: DnsTarget | None = None):
        """`connections`: cxr.triton.request.connections(settings), one per endpoint; `observer` and
        `logger` hear of ejections and re-admissions. With `dns` (cxr.triton.discovery.dns_target), the
        endpoints follow the addresses of that name, looked up every period once a call or health look runs
        on the event loop."""
        endpoints = [_endpoint(c) for c in connections]
        self.url = ", ".join(e.url for e in endpoints)
        self.pool = EndpointPool(endpoints, _server_ready, TritonEndpointDownError, observer, logger=logger)
        self.dns = None if dns is None else DnsEndpoints(self.pool, dns, lambda url: _endpoint(dns.connect(url)),
                                                         _close_endpoint, logger=logger)

    async def embed_images(self, tower: TowerSpec, pixels: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """`pixels` [n, size, size, 3] uint8 through the image tower."""
        return await self.infer(tower, {tower.inputs[0].name: pixels}, timeout)

    async def embed_tokens(self, tower: TowerSpec, tokens: dict[str, np.ndarray],
                           timeout: float | None = None) -> np.ndarray:
        """The tokenizer's arrays through the text tower."""
        return await self.infer(tower, tokens, timeout)

    async def infer(self, tower: TowerSpec, arrays: dict[str, np.ndarray],
                    timeout: float | None = None) -> np.ndarray:
        """One request, on whichever endpoint answers within `timeout` (None: each endpoint tried once)."""
        self._follow_dns()
        inputs = infer_inputs(tower, arrays)  # built once, whichever endpoint answers
        outputs = requested_outputs(tower)

        async def attempt(endpoint: Endpoint, seconds_left: float | None):
            try:
                return await endpoint.client.infer(tower.triton_name, inputs, outputs=outputs,
                                                   client_timeout=seconds_left)
            except InferenceServerException as exc:
                raise translate(exc, tower.triton_name, endpoint.url) from exc

        result = await self.pool.call(attempt, timeout)
        return result.as_numpy(tower.output.name)

    async def is_ready(self, *towers: TowerSpec) -> bool:
        """True when at least one endpoint has every one of `towers` ready."""
        self._follow_dns()
        return any(await asyncio.gather(*(_towers_ready(e, towers) for e in self.pool.endpoints)))

    async def close(self) -> None:
        if self.dns is not None:
            await self.dns.close()
        await self.pool.close()
        for endpoint in self.pool.endpoints:
            await endpoint.client.close()

    def _follow_dns(self) -> None:
        # Started here rather than in __init__: the client may be made before its event loop runs.
        if self.dns is not None:
            self.dns.start()


def _endpoint(connection: dict) -> Endpoint:
    """An endpoint with its own channel: our channel options, plus any the connection adds (a TLS name)."""
    kwargs = {k: v for k, v in connection.items() if k != "channel_args"}
    options = CHANNEL_OPTIONS + list(connection.get("channel_args", ()))
    return Endpoint(connection["url"], aioclient.InferenceServerClient(**kwargs, channel_args=options))


async def _close_endpoint(endpoint: Endpoint) -> None:
    await endpoint.client.close()


async def _towers_ready(endpoint: Endpoint, towers: Sequence[TowerSpec]) -> bool:
    try:
        return all([await endpoint.client.is_model_ready(t.triton_name, client_timeout=READY_TIMEOUT_S)
                    for t in towers])
    except InferenceServerException:
        return False


async def _server_ready(endpoint: Endpoint) -> bool:
    """Re-admission asks Triton's server readiness: with Triton's default --strict-readiness it holds
    only while every model of the repository is ready, whichever model the failed call wanted."""
    return await endpoint.client.is_server_ready(client_timeout=READY_TIMEOUT_S)
