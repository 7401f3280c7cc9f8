"""The gateway finding its Triton through DNS (triton_dns, as in deploy/k8s): against the session's real
Triton, named `localhost`, the looked-up address replaces the name in the pool and serves the queries, and
the endpoint series name the address, not the name."""

import time
import urllib.request
from dataclasses import replace

import pytest

from cxr.client import RetrievalClient
from cxr.processes import free_ports
from support import GATEWAY_MODEL, BackgroundGateway

pytestmark = pytest.mark.triton
SERIES = "cxr_gateway_triton_endpoint_up"


def _endpoint_series(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.split('endpoint="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(SERIES + "{")}


def test_the_gateway_calls_the_addresses_its_triton_name_resolves_to(served, nih_index):
    (metrics_port,) = free_ports(1)
    name = f"localhost:{served.triton_grpc_port}"
    address = f"127.0.0.1:{served.triton_grpc_port}"
    settings = replace(served, model=GATEWAY_MODEL, triton_dns=name, triton_dns_refresh_s=0.2,
                       metrics_port=metrics_port)
    background = BackgroundGateway(settings)
    try:
        deadline = time.monotonic() + 30
        while _endpoint_series(metrics_port) != {address: 1.0}:
            assert time.monotonic() < deadline, _endpoint_series(metrics_port)
            time.sleep(0.1)
        with RetrievalClient(background.address) as client:
            answers = [len(client.search_text(text, top_k=3).hits) for text in ("effusion", "cardiomegaly", "mass")]
        assert answers == [3, 3, 3]
        assert [e.url for e in background.gateway.resources.embedder.client.pool.endpoints] == [address]
    finally:
        background.stop()
