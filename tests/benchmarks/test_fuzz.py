"""1,000 hostile requests (the `make fuzz` mix) against the real gateway with mutual TLS, tokens and
the audit log on: no UNKNOWN or INTERNAL, no call past its deadline, still SERVING, each call audited once."""

from dataclasses import replace

import pytest
from grpc_health.v1 import health_pb2

from benchmarks import fuzz
from gateway import audit_chain, process
from gateway.dev_pki import dev_security
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
REQUESTS = 1000


def test_hostile_requests_get_clean_statuses_and_the_gateway_keeps_serving(served, nih_index, tmp_path):
    settings = dev_security(replace(served, model="medsiglip-tiny", rate_limit_per_s=0), tmp_path / "pki", "fuzz",
                            ["search", "studies", "admin"], audit_log=tmp_path / "audit.log")
    background = BackgroundGateway(settings)
    try:
        local = replace(settings, gateway_port=int(background.address.split(":")[1]))
        made = fuzz.HostileRequests(local, DATA_DIR / "cxr_samples", seed=1)
        summary = fuzz.summarize(fuzz.fire(local, [made.draw() for _ in range(REQUESTS)]))
        assert process.health(local) == health_pb2.HealthCheckResponse.SERVING
    finally:
        background.stop()
    assert summary["requests"] == REQUESTS
    assert summary["failed"] == 0 and summary["hangs"] == 0, summary["by_kind"]
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"} <= set(summary["codes"])
    assert audit_chain.verify_log(settings.audit_log) == (None, REQUESTS)
