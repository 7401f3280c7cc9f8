"""The HTTP side's listener: uvicorn serving gateway.http_api on the gateway's own event loop.

It binds its socket when built (so a port in use fails `create_server`, as the gRPC port does),
uses the gateway's TLS files (client certificates required when tls_client_ca is set) and reaches
the gRPC server over an internal Unix socket in a private folder.

uvicorn has no limit on how long a client may take to send its headers or how many connections it
may hold, so a few slow clients (slowloris) could hold the HTTP side open indefinitely; here:
- a connection must complete its TLS handshake and each request's headers within
  `http_header_timeout_s` (a connection that sends nothing is closed after it, with 408);
- between requests a connection may stay idle `http_keepalive_s`;
- a body must arrive within `http_body_timeout_s` (gateway.http_messages);
- at most `http_max_connections` connections are open; more are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxr.errors import CxrError
from cxr.settings import Settings, is_loopback
from gateway import tls
from gateway.http_admission import CLIENT_CERT_STATE, FrontDoor
from gateway.http_api import Upstream, create_app
from gateway.http_login import Login

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


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    keepalive_s: float = 5.0
    max_connections: int = 256

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.http_header_timeout_s, settings.http_keepalive_s, settings.http_max_connections)


TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
REFUSED_LOG_PERIOD_S = 60.0  # connections refused over the cap are logged at most this often


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the connection's client certificate subject in each request's
    scope["state"] (uvicorn has no ASGI TLS extension), a deadline for each request's headers and a cap
    on open connections."""

    refused_logged = 0.0  # class-wide: when a refusal over the cap was last logged

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_deadline: asyncio.TimerHandle | None = None
        self._waiting = False  # for a request's headers, since the deadline was set: bytes do not reset it

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(transport)
            return
        self.app_state = dict(self.app_state, **{CLIENT_CERT_STATE: _subject(transport)})
        self._await_headers()

    def _refuse(self, transport) -> None:
        now = time.monotonic()
        if now - _Protocol.refused_logged > REFUSED_LOG_PERIOD_S:
            _Protocol.refused_logged = now
            log.warning("HTTP connections refused: %d open, the limit (http_max_connections)",
                        self.limits.max_connections)
        transport.abort()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:
            self._stop_waiting()  # a request's headers are in
        elif self._between_requests() and not self._waiting:
            self._await_headers()  # the first bytes of a next request: its headers have the same deadline

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_headers(self) -> None:
        self._waiting = True
        self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)

    def _stop_waiting(self) -> None:
        self._waiting = False
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        # Looked at once more after what is ready to run: on a loop that was busy, the bytes that complete
        # the headers may be waiting their turn behind this timer.
        self._header_deadline = None
        self.loop.call_soon(self._close_if_still_waiting)

    def _close_if_still_waiting(self) -> None:
        if self._waiting and self._between_requests() and not self.transport.is_closing():
            self.transport.write(TIMED_OUT)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that break HTTP framing (a bad chunk size in a body, say). A request
        of this connection may be in the app already: its own answer now has nowhere to go, so it is
        dropped quietly (uvicorn would log it as an exception in the application)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, listener: socket.socket, ssl_context, limits: ConnectionLimits):
        super().__init__(config)
        self.listener = listener
        self.ssl_context = ssl_context
        self.limits = limits

    def capture_signals(self):
        return contextlib.nullcontext()  # the gateway's own SIGTERM handler drains, then stops this server

    async def startup(self, sockets=None) -> None:
        """uvicorn's start-up, with the listener opened here: uvicorn passes asyncio no TLS handshake
        timeout, so a client that never finishes its handshake would hold a connection for 60 s."""
        await super().startup(sockets=[])
        factory = functools.partial(_Protocol, config=self.config, server_state=self.server_state,
                                    app_state=self.lifespan.state, limits=self.limits)
        handshake = self.limits.header_timeout_s if self.ssl_context else None
        self.servers.append(await asyncio.get_running_loop().create_server(
            factory, sock=self.listener, ssl=self.ssl_context, backlog=self.config.backlog,
            ssl_handshake_timeout=handshake))


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
    """The HTTP API on `address`, calling the gRPC server at `internal`, admitting callers through `door`."""

    def __init__(self, settings: Settings, address: str, internal: InternalSocket, max_message_bytes: int,
                 door: FrontDoor, login: Login | None = None):
        self.internal = internal
        self.upstream = Upstream(internal.target, settings.default_deadline_s, max_message_bytes)
        # Without auth the gateway stays on loopback; it then answers only loopback names (DNS rebinding).
        loopback_names_only = settings.auth != "token" and is_loopback(tls.host_of(address))
        app = create_app(self.upstream, door, loopback_names_only, settings.http_body_timeout_s, login)
        config = uvicorn.Config(app, lifespan="off", ws="none", log_config=None, access_log=False,
                                server_header=False, proxy_headers=False, timeout_keep_alive=settings.http_keepalive_s,
                                timeout_graceful_shutdown=max(1, int(settings.drain_grace_s)))
        context = tls.http_ssl_context(settings)
        self.socket = bind(address)
        self.server = _Server(config, self.socket, context, ConnectionLimits.of(settings))
        self.port: int = self.socket.getsockname()[1]
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.upstream.open()
        self._task = asyncio.create_task(self.server.serve())
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
