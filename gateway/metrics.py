"""Prometheus metrics of the gateway, served on their own loopback port (`metrics_port`).

Labels carry method names, status codes, stages, refusal reasons and model names only: never a
query, a principal, a study or anything else about a patient. Every name the Grafana dashboard in
deploy/monitoring/ uses is tested against the live exposition.
"""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cxr import __version__
from cxr.errors import CxrError
from gateway import calls

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why calls are refused before any work; each series exists from the start, at 0, so alerts on
# increase() see the first one.
REJECTION_REASONS = ("unauthenticated", "permission_denied", "refused_rate", "concurrency", "rate_limit", "deadline",
                     "draining", "decode_queue", "decode_pixels", "audit")


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("cxr_gateway_rpcs", "RPCs answered, by method and gRPC status code",
                            ["method", "code"], registry=r)
        self.seconds = Histogram("cxr_gateway_stage_seconds", "Time spent per stage of a call (total: the whole call)",
                                 ["method", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("cxr_gateway_in_flight_rpcs", "RPCs being handled now", registry=r)
        self.rejected = Counter("cxr_gateway_rejected_rpcs", "RPCs refused before any work, by reason",
                                ["reason"], registry=r)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        self.index_vectors = Gauge("cxr_gateway_index_vectors", "Vectors in the loaded index", ["model"], registry=r)
        self.index_created = Gauge("cxr_gateway_index_created_timestamp_seconds",
                                   "When the loaded index was built (its version)", ["model"], registry=r)
        self.search_batch_size = Histogram("cxr_gateway_search_batch_size", "Queries searched together in one batch",
                                           ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.index_load_failures = Counter("cxr_gateway_index_load_failures",
                                           "Index builds refused at load (corrupt, mismatched)", ["model"], registry=r)
        self.triton_up = Gauge("cxr_gateway_triton_up", "1 when Triton has the active model's towers ready",
                               registry=r)
        # One series per Triton endpoint in triton_urls: its address is the label, nothing else.
        self.triton_endpoint_up = Gauge("cxr_gateway_triton_endpoint_up", "1 while a Triton endpoint is in the "
                                        "gateway's rotation, 0 while ejected after a failed call", ["endpoint"],
                                        registry=r)
        self.triton_ejections = Counter("cxr_gateway_triton_ejections", "Triton endpoints taken out of rotation "
                                        "after a failed call", ["endpoint"], registry=r)
        self.text_cache_hits = Counter("cxr_gateway_text_cache_hits", "Text queries answered from the embedding "
                                       "cache (hit rate: hits / (hits + misses))", ["model"], registry=r)
        self.text_cache_misses = Counter("cxr_gateway_text_cache_misses", "Text queries the text tower embedded",
                                         ["model"], registry=r)
        self.serving = Gauge("cxr_gateway_serving", "1 when the gateway reports SERVING", registry=r)
        self.audit_lines = Gauge("cxr_gateway_audit_lines", "Lines in the audit chain since its first (the next "
                                 "line's seq): compare with the log to see a cut tail", registry=r)
        # Always 1: the version is the label, so a dashboard or an alert can tell which release each gateway runs.
        self.build_info = Gauge("cxr_gateway_build_info", "The gateway's version (cxr-retrieval), as its label",
                                ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self._server = None

    def observe_call(self, call: calls.Call, code: grpc.StatusCode) -> None:
        method = calls.method_name(call.method)
        self.rpcs.labels(method, code.name).inc()
        if call.rejected:
            self.rejected.labels(call.rejected).inc()
        for stage, seconds in call.stages.items():
            self.seconds.labels(method, stage).observe(seconds)
        self.seconds.labels(method, "total").observe(time.monotonic() - call.started)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 picks a free port); returns the port."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise CxrError(f"the metrics port {host}:{port} cannot be opened ({exc.strerror or exc}): stop what holds "
                           "it, or set metrics_port (CXR_METRICS_PORT) to another port, or to 0 to turn metrics off") \
                from exc
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        return calls.wrap_unary(await continuation(details), self._measured)

    async def _measured(self, run, request, context):
        self.metrics.in_flight.inc()
        code = grpc.StatusCode.OK
        try:
            return await run()
        except BaseException:
            code = context.code() or grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.in_flight.dec()
            call = calls.current()
            if call is not None:
                self.metrics.observe_call(call, code)

