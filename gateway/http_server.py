"""The HTTP side's listener: uvicorn serving gateway.http_api on the gateway's own event loop.

It binds its socket when built (so a port in use fails `create_server`, as the gRPC port does),
uses the gateway's TLS files (client certificates required when tls_client_ca is set) and reaches
the gRPC server over an internal Unix socket in a private folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from pathlib import Path

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxr.errors import CxrError
from cxr.settings import Settings, is_loopback
from gateway import tls
from gateway.http_api import CLIENT_CERT_STATE, Upstream, create_app

log = logging.getLogger("cxr.gateway.http")
SOCKET_NAME = "grpc.sock"


class InternalSocket:
    """Where the HTTP side reaches the gRPC server: a Unix socket in a folder only this user can open
    (mkdtemp makes it 0700), which is why calls arriving there may say who their HTTP client is."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="cxr-gateway-"))
        self.target = f"unix:{self.folder / SOCKET_NAME}"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _subject(transport) -> str:
    """The TLS client certificate's subject as gRPC writes it (RFC 4514, 'CN=...,O=...'), or ""."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return ""
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return subject.encode("ascii", "backslashreplace").decode()  # gRPC metadata is ASCII


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the connection's client certificate subject in each request's
    scope["state"] (uvicorn has no ASGI TLS extension)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.app_state = dict(self.app_state, **{CLIENT_CERT_STATE: _subject(transport)})


class _Server(uvicorn.Server):
    def capture_signals(self):
        return contextlib.nullcontext()  # the gateway's own SIGTERM handler drains, then stops this server


def bind(address: str) -> socket.socket:
    host, port = tls.host_of(address), int(address.rsplit(":", 1)[1])
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it every
    # answer (headers, then body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        return sock
    except OSError as exc:
        sock.close()
        raise CxrError(f"the HTTP port {address} cannot be opened ({exc.strerror or exc}): stop what holds it, or "
                       "set http_port (CXR_HTTP_PORT) to another port, or to 0 to turn the HTTP API off") from exc


class HttpServer:
    """The HTTP API on `address`, calling the gRPC server at `internal`."""

    def __init__(self, settings: Settings, address: str, internal: InternalSocket, max_message_bytes: int):
        self.internal = internal
        self.upstream = Upstream(internal.target, settings.default_deadline_s, max_message_bytes)
        context = tls.http_ssl_context(settings)
        # Without auth the gateway stays on loopback; it then answers only loopback names (DNS rebinding).
        loopback_names_only = settings.auth != "token" and is_loopback(tls.host_of(address))
        config = uvicorn.Config(create_app(self.upstream, loopback_names_only), lifespan="off", ws="none",
                                http=_Protocol, log_config=None, access_log=False, server_header=False,
                                proxy_headers=False, timeout_graceful_shutdown=max(1, int(settings.drain_grace_s)),
                                ssl_context_factory=(lambda config, default: context) if context else None)
        self.server = _Server(config)
        self.socket = bind(address)
        self.port: int = self.socket.getsockname()[1]
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.upstream.open()
        self._task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise CxrError("the HTTP API stopped while starting; see the gateway log")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float) -> None:
        """Stop listening, let answers in progress finish (at most `grace` s), close the channel."""
        if self._task is not None:
            self.server.should_exit = True
            try:
                await asyncio.wait_for(self._task, grace + 2)
            except TimeoutError:
                log.warning("the HTTP API did not stop within %.0f s", grace + 2)
        else:
            self.socket.close()
        await self.upstream.close()
        self.internal.remove()
