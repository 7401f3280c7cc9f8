"""The embedder over several endpoints, against small fake Tritons (gRPC on loopback) and closed ports:
the gateway's side of it, its errors and metrics series."""

import asyncio
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import generate_latest

from cxr.triton.errors import TritonFailedError, TritonUnavailableError
from gateway.embedder import EndpointMetrics, TritonEmbedder
from gateway.metrics import GatewayMetrics
from support.fake_triton import TEXT_TOWER, TOWER, FakeTriton, closed_url, serve, serve_on

MODEL = SimpleNamespace(image=TOWER, text=TEXT_TOWER)
PIXELS = np.zeros((2, 4, 4, 3), np.uint8)


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def _sample(metrics: GatewayMetrics, name: str, url: str) -> float:
    return metrics.registry.get_sample_value(name, {"endpoint": url})


def test_one_unreachable_endpoint_fails_as_before_naming_it_and_the_remedy():
    url = closed_url()

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


def test_calls_go_round_the_live_endpoints_and_skip_the_dead_one(caplog):
    metrics = GatewayMetrics()
    dead = closed_url()

    async def run():
        fakes = [FakeTriton(1), FakeTriton(2)]
        served = [await serve(fake) for fake in fakes]
        embedder = TritonEmbedder([{"url": dead}] + [{"url": url} for _, url in served], metrics)
        try:
            answers = [int((await embedder.embed_images(MODEL, PIXELS, timeout=5))[0, 0]) for _ in range(6)]
            return answers, [fake.infers for fake in fakes], embedder.url, served
        finally:
            await embedder.close()
            for server, _ in served:
                await server.stop(0)

    with caplog.at_level(logging.WARNING, logger="cxr.gateway"):
        answers, infers, url, served = _run(run())
    assert set(answers) == {1, 2} and sum(infers) == 6 and min(infers) >= 2
    assert url == ", ".join([dead] + [u for _, u in served])
    assert (_sample(metrics, "cxr_gateway_triton_endpoint_up", dead),
            _sample(metrics, "cxr_gateway_triton_ejections_total", dead)) == (0, 1)
    assert [r.name for r in caplog.records if "ejected" in r.getMessage()] == ["cxr.gateway"]  # the gateway's log


def test_the_pools_news_become_the_endpoint_series():
    metrics = GatewayMetrics()
    observer = EndpointMetrics(metrics)
    seen = []
    for event in (observer.joined, observer.ejected, observer.readmitted):
        event("a:1")
        seen.append((_sample(metrics, "cxr_gateway_triton_endpoint_up", "a:1"),
                     _sample(metrics, "cxr_gateway_triton_ejections_total", "a:1")))
    assert seen == [(1, 0), (0, 1), (1, 1)]


def test_an_endpoint_that_left_dns_leaves_no_series_behind():
    metrics = GatewayMetrics()
    observer = EndpointMetrics(metrics)
    for url in ("10.0.0.1:8001", "10.0.0.2:8001"):
        observer.joined(url)
    observer.ejected("10.0.0.1:8001")
    observer.left("10.0.0.1:8001")
    observer.left("10.0.0.9:8001")  # never joined: nothing to forget
    exposed = generate_latest(metrics.registry).decode()
    assert "10.0.0.1:8001" not in exposed
    assert _sample(metrics, "cxr_gateway_triton_endpoint_up", "10.0.0.2:8001") == 1


def test_a_bad_request_is_internal_not_retried_and_ejects_nobody():
    metrics = GatewayMetrics()

    async def run():
        refusing, other = FakeTriton(1), FakeTriton(2)
        refusing.refuse = True
        served = [await serve(refusing), await serve(other)]
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
        served = [await serve(FakeTriton(1, ready=False)), await serve(FakeTriton(2, ready=True))]
        urls = [{"url": closed_url()}] + [{"url": url} for _, url in served]
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
        server, url = await serve(fake)
        other, other_url = await serve(FakeTriton(2))
        embedder = TritonEmbedder([{"url": url}, {"url": other_url}], metrics)
        embedder.client.pool.period_s = 0.05
        try:
            await server.stop(0)  # down: the next call on it fails and ejects it
            for _ in range(2):
                await embedder.embed_images(MODEL, PIXELS, timeout=5)
            ejected = _sample(metrics, "cxr_gateway_triton_endpoint_up", url)
            server, _ = await serve_on(fake, url)  # back, but its models not ready yet: stays out
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
