"""Two Tritons on one model repository behind one gateway: one is SIGKILLed under load, the gateway
ejects it and the queries carry on on the other; restarted, it is re-admitted and serves again."""

import os
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxr.processes import free_ports, stop_process
from cxr.registry import get_model
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from cxr.triton import server_process
from support import SERVED, BackgroundGateway

pytestmark = pytest.mark.triton
GATEWAY_MODEL = "medsiglip-tiny"  # the model of the session's nih_index
CLIENTS = 4
QUERIES_PER_CLIENT = 400  # the load is bounded in count ...
LOAD_SECONDS = 90  # ... and in time, whatever happens to the Tritons
QUERY_DEADLINE_S = 10.0
TEXTS = ["small left pleural effusion", "cardiomegaly", "no acute cardiopulmonary process", "right upper lobe mass",
         "pneumothorax", "hyperinflated lungs", "atelectasis at the bases", "enlarged cardiac silhouette"]


@dataclass
class Outcome:
    started: float
    code: str  # "OK" or the gRPC status name


class SecondTriton:
    """Another tritonserver on the session's model repository, on ports of its own."""

    def __init__(self, served, log_file):
        http, grpc_port, metrics = free_ports(3)
        self.settings = replace(served, triton_http_port=http, triton_grpc_port=grpc_port, triton_metrics_port=metrics)
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.settings.triton_grpc_url

    def start(self) -> None:
        self.process, _ = server_process.start(self.settings, self.log_file)
        models = [m for name in SERVED for m in (get_model(name).image_model, get_model(name).text_model)]
        server_process.wait_ready(self.settings, models, self.process, timeout=240, log_file=self.log_file)

    def kill(self) -> None:
        """SIGKILL to its process group: tritonserver and its python-backend stubs die at once, as in a crash."""
        if self.process is not None:
            _kill_group(self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            _kill_group(self.process)  # stubs a crashed server left behind

    def inferences(self) -> float:
        """Text-tower requests this Triton has answered (its Prometheus counter)."""
        model = get_model(GATEWAY_MODEL).text_model
        url = f"http://{self.settings.triton_host}:{self.settings.triton_metrics_port}/metrics"
        lines = urllib.request.urlopen(url, timeout=5).read().decode().splitlines()
        prefix = f'nv_inference_request_success{{model="{model}"'
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session: its pid is its group
    except ProcessLookupError:
        pass
    process.wait(30)


@pytest.fixture
def second_triton(served, tmp_path):
    triton = SecondTriton(served, tmp_path / "triton-b.log")
    try:
        triton.start()
        yield triton
    finally:
        triton.stop()


@pytest.fixture
def balanced(served, nih_index, second_triton):
    """A gateway over both Tritons: the session's one and the second."""
    settings = replace(served, model=GATEWAY_MODEL, triton_urls=(served.triton_grpc_url, second_triton.url),
                       rate_limit_per_s=0)
    background = BackgroundGateway(settings)
    try:
        yield background
    finally:
        background.stop()


def _sample(background: BackgroundGateway, name: str, url: str) -> float:
    return background.gateway.metrics.registry.get_sample_value(name, {"endpoint": url})


def _in_flight(background: BackgroundGateway, url: str) -> int:
    return next(e.in_flight for e in background.gateway.resources.embedder.client.pool.endpoints if e.url == url)


def _wait(condition, seconds: float, what: str) -> float:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)
    return time.monotonic()


def _queries(address: str, stop: threading.Event, outcomes: list[Outcome], client: int) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        for i in range(QUERIES_PER_CLIENT):
            if stop.is_set():
                return
            started = time.monotonic()
            request = pb.SearchByTextRequest(text=TEXTS[(i + client) % len(TEXTS)], top_k=5)
            try:
                stub.SearchByText(request, timeout=QUERY_DEADLINE_S)
                outcomes.append(Outcome(started, "OK"))
            except grpc.RpcError as error:
                outcomes.append(Outcome(started, error.code().name))


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def test_a_killed_triton_is_ejected_under_load_and_readmitted_once_back(balanced, second_triton, served):
    address, b = balanced.address, second_triton.url
    _wait(lambda: _serving(address), 30, "SERVING over both Tritons")
    stop, outcomes = threading.Event(), []
    timer = threading.Timer(LOAD_SECONDS, stop.set)
    timer.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(_queries, address, stop, outcomes, i) for i in range(CLIENTS)]
        try:
            _wait(lambda: sum(o.code == "OK" for o in outcomes) >= 40, 60, "40 answered queries")
            assert second_triton.inferences() > 0, "the second Triton took no share of the load"
            _wait(lambda: _in_flight(balanced, b) > 0, 10, f"a call in flight on {b}")  # the kill must catch some
            in_flight = _in_flight(balanced, b)
            killed = time.monotonic()
            second_triton.kill()
            ejected = _wait(lambda: _sample(balanced, "cxr_gateway_triton_ejections_total", b) >= 1, 30,
                            f"the ejection of {b}")
            _wait(lambda: sum(o.code == "OK" and o.started > ejected for o in outcomes) >= 40, 60,
                  "40 answered queries after the ejection")
        finally:
            stop.set()
            timer.cancel()
        for client in clients:
            client.result()
    before = [o for o in outcomes if o.code != "OK" and o.started <= ejected]
    after = [o for o in outcomes if o.code != "OK" and o.started > ejected]
    print(f"\n{len(outcomes)} queries, {in_flight} in flight on the killed Triton: {len(before)} failed before "
          f"its ejection, {len(after)} after it; ejected {ejected - killed:.2f} s after the kill")
    assert after == []
    assert before == []  # each call that met the dead Triton was retried on the live one within its deadline
    assert _sample(balanced, "cxr_gateway_triton_endpoint_up", b) == 0
    assert _sample(balanced, "cxr_gateway_triton_endpoint_up", served.triton_grpc_url) == 1
    assert _serving(address)

    second_triton.start()
    _wait(lambda: _sample(balanced, "cxr_gateway_triton_endpoint_up", b) == 1, 15, f"the re-admission of {b}")
    with grpc.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        for text in TEXTS:
            stub.SearchByText(pb.SearchByTextRequest(text=text, top_k=5), timeout=QUERY_DEADLINE_S)
    assert second_triton.inferences() > 0, "the re-admitted Triton took no share of the load"
    assert _sample(balanced, "cxr_gateway_triton_ejections_total", b) == 1
