"""The gateway process: a grpc.aio server with the Retrieval service, grpc.health.v1 and reflection.

`create_server(settings, address)` builds a server bound to `address` (tests pass port 0);
`main()` is the process entry point (`python -m gateway.server`, started by `cxr serve`).
With `http_port` set (or an `http_address`), the same process serves the HTTP/JSON API and the
search page (gateway.http_server), which calls this gRPC server over an internal Unix socket.

Every call passes the same interceptors, in this order: the call record (request id), metrics,
the audit trail (when `audit_log` is set), with `auth = "token"` the throttle of addresses whose calls
keep being refused and then identity and scopes, then admission control (drain, concurrency caps,
rate limit per query, default deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cxr.catalog import ExportedModel, load_catalog
from cxr.errors import CxrError
from cxr.images import ImageLimits
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from cxr.store import factory
from cxr.triton.discovery import dns_target
from cxr.triton.request import connections
from gateway import tls, writes
from gateway.admission import AdmissionInterceptor, DecodeQueue, Limits, RateLimiter, RefusalLimiter
from gateway.audit_interceptor import AuditInterceptor
from gateway.audit_log import AuditLog
from gateway.auth import AuthInterceptor, authenticator_from
from gateway.calls import CallInterceptor
from gateway.embedder import TritonEmbedder
from gateway.embedding import Embedder
from gateway.hits import ViewerLinks
from gateway.http_admission import FrontDoor
from gateway.http_login import Login
from gateway.http_server import HttpServer, InternalSocket
from gateway.indexes import IndexSet
from gateway.metrics import GatewayMetrics, MetricsInterceptor
from gateway.report_feed import ReportFeed
from gateway.service import RetrievalService
from gateway.sessions import Sealer, SessionStore
from gateway.thumbnails import Thumbnails

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a full-size DICOM or a 2.3 MB JPEG, with room to spare
HEALTH_PERIOD_S = 1.0
DECODE_THREADS = 4
log = logging.getLogger("cxr.gateway")


@dataclass(frozen=True)
class Resources:
    """What the gateway opens at start and closes at stop; the service is handed them and only uses them."""

    catalog: dict[str, ExportedModel]
    active_model: str
    indexes: IndexSet
    embedder: Embedder
    decoder: DecodeQueue
    reports: ReportFeed

    async def close(self) -> None:
        await self.embedder.close()
        self.decoder.shutdown()
        await asyncio.to_thread(self.reports.close)
        self.indexes.close()


class Gateway:
    """A built server, the task that keeps its health status true, and what it must close."""

    def __init__(self, server: grpc.aio.Server, resources: Resources, health: health_aio.HealthServicer,
                 admission: AdmissionInterceptor, metrics: GatewayMetrics, audit: AuditLog | None,
                 http: HttpServer | None = None):
        self.server = server
        self.http = http
        self.resources = resources
        self.health = health
        self.admission = admission
        self.metrics = metrics
        self.audit = audit
        self.metrics_port: int | None = None
        self.http_port: int | None = http.port if http else None
        self._watch: asyncio.Task | None = None
        self._reported: tuple[bool, str | None] | None = None  # (Triton ready, index problem) last logged

    async def start(self, metrics_host: str = "127.0.0.1", metrics_port: int = 0) -> None:
        if metrics_port:
            self.metrics_port = self.metrics.serve(metrics_host, metrics_port)
        # grpc's health servicer says SERVING for "" until told otherwise: a probe right after start
        # would pass for an index the first check is about to refuse.
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self.resources.reports.start(self.resources.indexes)
        self.resources.indexes.start()
        if self.http is not None:
            await self.http.start()
        self._watch = asyncio.create_task(self._watch_health())

    async def _watch_health(self) -> None:
        """Every second: reload changed indexes, then SERVING only while a Triton endpoint (one is enough)
        has the active model's towers ready and its index is loaded. No error ends this loop: it is
        logged and tried again."""
        while True:
            try:
                await self._check_health()
            except Exception:  # noqa: BLE001 - the watcher must outlive anything one look runs into
                log.exception("health check failed; trying again in %.0f s", HEALTH_PERIOD_S)
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def _check_health(self) -> None:
        owned = self.resources
        await asyncio.get_running_loop().run_in_executor(None, owned.indexes.refresh)
        model = owned.catalog.get(owned.active_model)
        triton_ready = bool(model) and await owned.embedder.is_ready(model)
        problem = await asyncio.to_thread(owned.indexes.problem, model.name) if model else "missing"
        ready = triton_ready and problem is None
        if (triton_ready, problem) != self._reported:
            log.log(logging.INFO if ready else logging.WARNING, "%s: Triton %s, index %s",
                    "SERVING" if ready else "NOT_SERVING", "ready" if triton_ready else "not ready",
                    problem or "loaded")
            self._reported = (triton_ready, problem)
        if self.audit is not None:
            self.audit.flush_throttled()
        self.metrics.triton_up.set(int(triton_ready))
        self.metrics.serving.set(int(ready))
        await self._set_health(health_pb2.HealthCheckResponse.SERVING if ready
                               else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: NOT_SERVING at once, new calls refused, calls in flight given `grace` seconds to finish."""
        if self._watch:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        self.admission.drain()
        if not await self.admission.wait_idle(grace):
            log.warning("%d calls still in flight after %.0f s: cancelling them", self.admission.in_flight, grace)
        if self.http is not None:
            await self.http.stop(grace)
        await self.server.stop(0)
        await self.resources.close()
        self.metrics.stop()
        if self.audit is not None:
            self.audit.flush_throttled(now=float("inf"))
            self.audit.close()


def _limits(settings: Settings) -> Limits:
    return Limits(max_concurrent_rpcs=settings.max_concurrent_rpcs,
                  max_concurrent_per_client=settings.max_concurrent_rpcs_per_client,
                  rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst,
                  default_deadline_s=settings.default_deadline_s)


def create_server(settings: Settings, address: str | None = None, embedder: Embedder | None = None,
                  http_address: str | None = None) -> tuple[Gateway, int]:
    """A gateway over the settings' model repository and indexes, bound to `address`; with the HTTP
    API on `http_address` (default: gateway_host:http_port, none when http_port is 0). `embedder`
    replaces Triton (tests pass a fake)."""
    address = address or settings.gateway_address
    http_address = http_address or (f"{settings.gateway_host}:{settings.http_port}" if settings.http_port else None)
    tls.check_exposure(settings, address)
    if http_address:
        tls.check_exposure(settings, http_address)
    writes.check_writable(settings)  # logged, not refused: searches go on without reports or a copy folder
    metrics = GatewayMetrics()
    audit = AuditLog(settings.audit_log, settings.audit_max_bytes) if settings.audit_log else None
    if audit is not None:
        metrics.audit_lines.set_function(lambda: audit.seq)
    # One rate bucket per client, and one per address for refused calls, whichever side a call comes in on.
    rates = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    admission = AdmissionInterceptor(_limits(settings), rates)
    interceptors = [CallInterceptor(), MetricsInterceptor(metrics)]
    if audit is not None:
        interceptors.append(AuditInterceptor(audit))
    authenticator = refusals = login = None
    if settings.auth == "token":
        # Single sign-on: the page's sessions are credentials the one authenticator checks, sealed with the key
        # every replica shares (cxr.settings refuses a gateway beyond loopback without one).
        sessions = SessionStore(_sealer(settings)) if settings.oidc_issuer else None
        authenticator = authenticator_from(settings, sessions)
        refusals = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        interceptors += [RefusalLimiter(refusals), AuthInterceptor(authenticator)]
        login = Login.of(settings, sessions) if sessions is not None else None
    interceptors.append(admission)
    door = FrontDoor(authenticator, rates, refusals, audit, metrics, settings.max_concurrent_uploads,
                     login.cookie if login else None)

    owned = _resources(settings, metrics, embedder)
    service = RetrievalService(owned.catalog, owned.indexes, owned.embedder, owned.active_model, owned.decoder,
                               ImageLimits.of(settings), ViewerLinks(settings.viewer_url_template), Thumbnails(settings))
    server = grpc.aio.server(interceptors=interceptors,
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])  # a second gateway on this port fails to start
    pb_grpc.add_RetrievalServicer_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = tls.bind(server, settings, address)  # checked above, before anything was built
    http = _http(server, settings, http_address, door, login) if http_address else None
    return Gateway(server, owned, health, admission, metrics, audit, http), port


def _resources(settings: Settings, metrics: GatewayMetrics, embedder: Embedder | None) -> Resources:
    """The catalog, its indexes, the embedder (`embedder`, else Triton's) and the decode threads."""
    catalog = load_catalog(settings.model_repository)
    reports = ReportFeed({name: settings.reports_path(name) for name in catalog}, settings.reports_poll_s)
    indexes = IndexSet(factory.backend(settings), catalog, metrics=metrics, batch_max=settings.search_batch_max,
                       batch_wait_s=settings.search_batch_wait_ms / 1000, prepare=reports.prepare,
                       changes_poll_s=settings.index_changes_poll_s)
    decoder = DecodeQueue(DECODE_THREADS, settings.max_decode_queue, settings.max_decoding_pixels)
    return Resources(catalog, settings.model, indexes, embedder or _embedder(settings, metrics), decoder, reports)


def _sealer(settings: Settings) -> Sealer:
    if settings.oidc_session_key:
        return Sealer.of(settings.oidc_session_key)
    log.info("single sign-on: sessions sealed with a key of this process (no oidc_session_key): they end when it "
             "stops, and no other gateway opens them")
    return Sealer.private()


def _http(server: grpc.aio.Server, settings: Settings, address: str, door: FrontDoor,
          login: Login | None) -> HttpServer:
    """The HTTP API on `address`, and the internal socket it reaches `server` on."""
    internal = InternalSocket()
    try:
        server.add_insecure_port(internal.target)  # plaintext, but in a folder only this user can open
        return HttpServer(settings, address, internal, MAX_MESSAGE_BYTES, door, login)
    except BaseException:
        internal.remove()
        raise


def _embedder(settings: Settings, metrics: GatewayMetrics) -> TritonEmbedder:
    """One Triton client per endpoint in settings.triton_endpoints, balanced (cxr.triton.pool); with
    triton_dns, one per address of that name, looked up again every triton_dns_refresh_s."""
    return TritonEmbedder(connections(settings), metrics, settings.text_cache_entries, dns_target(settings))


async def serve(settings: Settings) -> None:
    gateway, port = create_server(settings)
    await gateway.start(settings.metrics_host, settings.metrics_port)
    triton = ", ".join(settings.triton_endpoints)
    if settings.triton_dns:
        triton += f" (every address, looked up every {settings.triton_dns_refresh_s:g} s)"
    log.info("gateway listening on %s:%d (%s); model %s, Triton %s", settings.gateway_host, port,
             _security(settings, gateway), settings.model, triton)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: draining calls in flight (at most %.0f s)", settings.drain_grace_s)
    await gateway.stop(settings.drain_grace_s)
    log.info("stopped")


def _security(settings: Settings, gateway: Gateway) -> str:
    transport = ("mutual TLS" if settings.tls_client_ca else "TLS") if settings.tls else "plaintext"
    metrics = f"{settings.metrics_host}:{gateway.metrics_port}" if gateway.metrics_port else "off"
    scheme = "https" if settings.tls else "http"
    http = f"{scheme}://{settings.gateway_host}:{gateway.http_port}" if gateway.http else "off"
    sign_in = f" (page sign-in at {settings.oidc_issuer})" if settings.auth == "token" and settings.oidc_issuer else ""
    return (f"{transport}, auth {settings.auth}{sign_in}, audit {settings.audit_log or 'off'}, metrics {metrics}, "
            f"HTTP {http}")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # pydicom logs a traceback for every corrupt frame it is given; the client gets INVALID_ARGUMENT for it,
    # and a hostile one must not be able to fill the gateway's log with them.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        asyncio.run(serve(load_settings()))
    except CxrError as error:  # a setting, a port, a file: the message says which and what to do
        log.error("cannot start: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
