"""SIGTERM: health NOT_SERVING at once, new calls refused, the calls in flight finish, exit 0."""

import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cxr import gateway_process
from cxr.client import RetrievalClient
from cxr.processes import free_ports
from cxr.retrieval.v1 import retrieval_pb2 as pb
from support import DATA_DIR

pytestmark = pytest.mark.triton
IMAGE = (DATA_DIR / "cxr_samples" / "00000001_000.png").read_bytes()
CLIENTS = 12


def _wait_in_flight(metrics_port: int, count: int, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        exposition = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        line = next(line for line in exposition.splitlines() if line.startswith("cxr_gateway_in_flight_rpcs "))
        if float(line.split()[1]) >= count:
            return int(float(line.split()[1]))
        time.sleep(0.02)
    raise AssertionError(f"{count} calls were not in flight within {seconds} s")


def test_a_stop_under_load_fails_no_call_in_flight(served, nih_index):
    port, metrics_port = free_ports(2)
    settings = replace(served, model="medsiglip-tiny", gateway_port=port, drain_grace_s=30, rate_limit_per_s=0,
                       metrics_port=metrics_port)
    process, log_file = gateway_process.start(settings)
    try:
        gateway_process.wait_answering(settings, process, log_file)
        gateway_process.wait_serving(settings)
        batch = [pb.SearchQuery(image=pb.SearchByImageRequest(image=IMAGE, top_k=5))] * 24

        def search(_):
            with RetrievalClient(settings.gateway_address, deadline_s=60, retries=0) as client:
                try:
                    return len(client.batch_search(batch).results)
                except grpc.RpcError as error:  # refused before it was admitted is fine; failed after is not
                    return error.code().name + ": " + error.details()

        with ThreadPoolExecutor(CLIENTS) as pool:
            calls = [pool.submit(search, i) for i in range(CLIENTS)]
            in_flight = _wait_in_flight(metrics_port, CLIENTS // 2)  # admitted, and far from done
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            assert gateway_process.health(settings) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                RetrievalClient(settings.gateway_address, retries=0).search_text("effusion")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            results = [call.result() for call in calls]
        refused_early = "UNAVAILABLE: the gateway is shutting down: retry, another replica will answer"
        assert set(results) <= {len(batch), refused_early}, set(results)
        assert results.count(len(batch)) >= in_flight
        assert process.wait(30) == 0
        assert "draining" in log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
