"""1,000 hostile gRPC requests and 1,000 hostile HTTP requests (the `make fuzz` mixes) against the real gateway
with mutual TLS, tokens and the audit log on: no UNKNOWN or INTERNAL, no 5xx, no call past its deadline,
still SERVING, each gRPC call audited once."""

import shutil
import ssl
from dataclasses import replace

import pytest
from grpc_health.v1 import health_pb2

from benchmarks import fuzz, hostile_http
from cxr import gateway_process
from cxr.dev_pki import dev_security
from gateway import audit_chain
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
REQUESTS = 1000
MODEL = "medsiglip-tiny"


def _own_index(served, nih_index, tmp_path):
    """The session's settings on a copy of its index: the mixes include DELETE with an admin token, which a
    living index carries out, and the other tests expect the session's index whole."""
    shutil.copytree(nih_index, tmp_path / "indexes" / MODEL)
    return replace(served, model=MODEL, index_dir=tmp_path / "indexes", rate_limit_per_s=0)


def test_hostile_requests_get_clean_statuses_and_the_gateway_keeps_serving(served, nih_index, tmp_path):
    settings = dev_security(_own_index(served, nih_index, tmp_path), tmp_path / "pki", "fuzz",
                            ["search", "studies", "admin"], audit_log=tmp_path / "audit.log")
    background = BackgroundGateway(settings)
    try:
        local = replace(settings, gateway_port=int(background.address.split(":")[1]))
        made = fuzz.HostileRequests(local, DATA_DIR / "cxr_samples", seed=1)
        summary = fuzz.summarize(fuzz.fire(local, [made.draw() for _ in range(REQUESTS)]))
        assert gateway_process.health(local) == health_pb2.HealthCheckResponse.SERVING
    finally:
        background.stop()
    assert summary["requests"] == REQUESTS
    assert summary["failed"] == 0 and summary["hangs"] == 0, summary["by_kind"]
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"} <= set(summary["codes"])
    assert audit_chain.verify_log(settings.audit_log) == (None, REQUESTS)


def test_hostile_http_requests_get_no_5xx_and_the_gateway_keeps_serving(served, nih_index, tmp_path):
    settings = dev_security(replace(_own_index(served, nih_index, tmp_path), **fuzz.HTTP_TIMEOUTS),
                            tmp_path / "pki", "fuzz", ["search", "studies", "admin"], audit_log=tmp_path / "audit.log")
    background = BackgroundGateway(settings, http=True)
    try:
        context = ssl.create_default_context(cafile=settings.ca)
        context.load_cert_chain(settings.client_cert, settings.client_key)
        target = hostile_http.Target(background.gateway.http_port, context, settings.token)
        made = hostile_http.HostileHttpRequests(target, DATA_DIR / "cxr_samples", tmp_path / "pki",
                                                settings.jwt_issuer, settings.jwt_audience, seed=1)
        summary = fuzz.summarize_http(fuzz.fire_http(target, [made.draw() for _ in range(REQUESTS)]))
        local = replace(settings, gateway_port=int(background.address.split(":")[1]))
        assert gateway_process.health(local) == health_pb2.HealthCheckResponse.SERVING
        assert fuzz.bystander_search(target) < fuzz.DEADLINE_S
    finally:
        background.stop()
    assert summary["requests"] == REQUESTS
    assert summary["failed"] == 0 and summary["hangs"] == 0, summary["by_kind"]
    assert {"200", "400", "401", "403", "404", "413"} <= set(summary["codes"]), summary["codes"]
