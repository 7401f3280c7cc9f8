"""The embedder over several endpoints, against small fake Tritons (gRPC on loopback) and closed ports."""

import asyncio
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cxr.processes import free_ports
from cxr.towers import TensorSpec, TowerSpec
from gateway.embedder import (
    TritonEmbedder,
    TritonEndpointDownError,
    TritonFailedError,
    TritonUnavailableError,
    _translate,
)
from gateway.metrics import GatewayMetrics

DIM = 3
TOWER = TowerSpec("fake_image", (TensorSpec("pixels", "uint8", (4, 4, 3)),),
                  TensorSpec("image_embeds", "float32", (DIM,)))
MODEL = SimpleNamespace(image=TOWER, text=TowerSpec("fake_text", (), TOWER.output))
PIXELS = np.zeros((2, 4, 4, 3), np.uint8)


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers every image with the vector [index, 0, 0]; `refuse` makes inference a bad request."""

    def __init__(self, index: int, ready: bool = True):
        self.index = index
        self.ready = ready
        self.refuse = False
        self.infers = 0

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.ready)

    async def ModelInfer(self, request, context):
        self.infers += 1
        if self.refuse:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'pixels'")
        rows = request.inputs[0].shape[0]
        vectors = np.zeros((rows, DIM), np.float32)
        vectors[:, 0] = self.index
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=TOWER.output.name, datatype="FP32",
                                                                  shape=[rows, DIM])
        return service_pb2.ModelInferResponse(model_name=request.model_name, outputs=[output],
                                              raw_output_contents=[vectors.tobytes()])


async def _serve(fake: FakeTriton) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _closed_url() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def _sample(metrics: GatewayMetrics, name: str, url: str) -> float:
    return metrics.registry.get_sample_value(name, {"endpoint": url})


def test_one_unreachable_endpoint_fails_as_before_naming_it_and_the_remedy():
    url = _closed_url()

    async def run():
        embedder = TritonEmbedder([{"url": url}])
        try:
            with pytest.raises(TritonUnavailableError) as error:
                await embedder.embed_images(MODEL, PIXELS, timeout=5)
            return error.value, await embedder.is_ready(MODEL)
        finally:
            await embedder.close()

    error, ready = _run(run())
    assert f"Triton at {url} cannot serve fake_image" in str(error) and "make serve" in str(error) and not ready


def test_calls_go_round_the_live_endpoints_and_skip_the_dead_one():
    metrics = GatewayMetrics()
    dead = _closed_url()

    async def run():
        fakes = [FakeTriton(1), FakeTriton(2)]
        served = [await _serve(fake) for fake in fakes]
        embedder = TritonEmbedder([{"url": dead}] + [{"url": url} for _, url in served], metrics)
        try:
            answers = [int((await embedder.embed_images(MODEL, PIXELS, timeout=5))[0, 0]) for _ in range(6)]
            return answers, [fake.infers for fake in fakes], embedder.url, served
        finally:
            await embedder.close()
            for server, _ in served:
                await server.stop(0)

    answers, infers, url, served = _run(run())
    assert set(answers) == {1, 2} and sum(infers) == 6 and min(infers) >= 2
    assert url == ", ".join([dead] + [u for _, u in served])
    assert (_sample(metrics, "cxr_gateway_triton_endpoint_up", dead),
            _sample(metrics, "cxr_gateway_triton_ejections_total", dead)) == (0, 1)


def test_a_bad_request_is_internal_not_retried_and_ejects_nobody():
    metrics = GatewayMetrics()

    async def run():
        refusing, other = FakeTriton(1), FakeTriton(2)
        refusing.refuse = True
        served = [await _serve(refusing), await _serve(other)]
        embedder = TritonEmbedder([{"url": url} for _, url in served], metrics)  # a new pool starts at the first
        try:
            with pytest.raises(TritonFailedError, match="unexpected shape"):
                await embedder.embed_images(MODEL, PIXELS, timeout=5)
            return [url for _, url in served], other.infers
        finally:
            await embedder.close()
            for server, _ in served:
                await server.stop(0)

    urls, retried = _run(run())
    assert retried == 0
    assert [_sample(metrics, "cxr_gateway_triton_ejections_total", url) for url in urls] == [0, 0]


def test_ready_when_one_endpoint_of_several_has_the_model():
    async def run():
        served = [await _serve(FakeTriton(1, ready=False)), await _serve(FakeTriton(2, ready=True))]
        urls = [{"url": _closed_url()}] + [{"url": url} for _, url in served]
        embedder = TritonEmbedder(urls)
        none_ready = TritonEmbedder(urls[:2])
        try:
            return await embedder.is_ready(MODEL), await none_ready.is_ready(MODEL)
        finally:
            for closing in (embedder, none_ready):
                await closing.close()
            for server, _ in served:
                await server.stop(0)

    assert _run(run()) == (True, False)


def test_an_ejected_endpoint_comes_back_when_its_triton_is_ready():
    metrics = GatewayMetrics()

    async def run():
        fake = FakeTriton(1, ready=False)
        server, url = await _serve(fake)
        other, other_url = await _serve(FakeTriton(2))
        embedder = TritonEmbedder([{"url": url}, {"url": other_url}], metrics)
        embedder.pool.period_s = 0.05
        try:
            await server.stop(0)  # down: the next call on it fails and ejects it
            for _ in range(2):
                await embedder.embed_images(MODEL, PIXELS, timeout=5)
            ejected = _sample(metrics, "cxr_gateway_triton_endpoint_up", url)
            server, _ = await _serve_on(fake, url)  # back, but its models not ready yet: stays out
            await asyncio.sleep(0.3)
            not_ready = _sample(metrics, "cxr_gateway_triton_endpoint_up", url)
            fake.ready = True
            for _ in range(100):
                if _sample(metrics, "cxr_gateway_triton_endpoint_up", url):
                    break
                await asyncio.sleep(0.05)
            return ejected, not_ready, _sample(metrics, "cxr_gateway_triton_endpoint_up", url)
        finally:
            await embedder.close()
            for stopping in (server, other):
                await stopping.stop(0)

    assert _run(run()) == (0, 0, 1)


async def _serve_on(fake: FakeTriton, url: str) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    server.add_insecure_port(url)
    await server.start()
    return server, url


@pytest.mark.parametrize("status, message, kind", [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", TritonEndpointDownError),
    ("StatusCode.UNAVAILABLE", "Socket closed", TritonEndpointDownError),
    ("StatusCode.INTERNAL", "Request for unknown model: 'x' is not found", TritonEndpointDownError),
    ("StatusCode.UNAVAILABLE", "Request for unknown model: 'x' has no available versions", TritonEndpointDownError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", TritonUnavailableError),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input", TritonFailedError),
])
def test_only_unreachable_or_modelless_endpoints_count_as_down(status, message, kind):
    error = _translate(InferenceServerException(message, status=status), "x", "127.0.0.1:8001")
    assert type(error) is kind
