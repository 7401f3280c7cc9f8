"""The asyncio client over fake Tritons (gRPC on loopback) and closed ports: failover, readiness, errors."""

import asyncio
import logging

import numpy as np
import pytest

from cxr.triton.client import AsyncTowerClient
from cxr.triton.errors import TritonEndpointDownError, TritonFailedError
from support.fake_triton import TEXT_TOWER, TOWER, Counting, FakeTriton, closed_url, serve

PIXELS = np.zeros((2, 4, 4, 3), np.uint8)


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def _stop(client: AsyncTowerClient, servers) -> None:
    await client.close()
    for server, _ in servers:
        await server.stop(0)


def test_a_dead_endpoint_is_ejected_and_its_calls_answered_by_the_live_one(caplog):
    dead, observer = closed_url(), Counting()

    async def run():
        served = [await serve(FakeTriton(7))]
        client = AsyncTowerClient([{"url": dead}, {"url": served[0][1]}], observer)
        try:
            return [await client.embed_images(TOWER, PIXELS, timeout=5) for _ in range(3)]
        finally:
            await _stop(client, served)

    with caplog.at_level(logging.WARNING, logger="cxr.triton"):
        answers = _run(run())
    assert all(a.shape == (2, 3) and (a[:, 0] == 7).all() for a in answers)
    assert (observer.up[dead], observer.ejections[dead]) == (0, 1)
    assert [r.name for r in caplog.records if "ejected" in r.getMessage()] == ["cxr.triton"]


def test_one_dead_endpoint_raises_endpoint_down_naming_it():
    dead = closed_url()

    async def run():
        client = AsyncTowerClient([{"url": dead}])
        try:
            with pytest.raises(TritonEndpointDownError) as error:
                await client.embed_images(TOWER, PIXELS, timeout=5)
            return error.value
        finally:
            await client.close()

    assert f"Triton at {dead} cannot serve fake_image" in str(_run(run()))


def test_a_bad_request_fails_without_a_retry():
    async def run():
        refusing, other = FakeTriton(1), FakeTriton(2)
        refusing.refuse = True
        served = [await serve(refusing), await serve(other)]
        client = AsyncTowerClient([{"url": url} for _, url in served])
        try:
            with pytest.raises(TritonFailedError, match="unexpected shape"):
                await client.embed_images(TOWER, PIXELS, timeout=5)
            return other.infers
        finally:
            await _stop(client, served)

    assert _run(run()) == 0


def test_ready_when_one_endpoint_has_every_tower_asked_for():
    async def run():
        served = [await serve(FakeTriton(1, ready=False)), await serve(FakeTriton(2))]
        some = AsyncTowerClient([{"url": closed_url()}] + [{"url": url} for _, url in served])
        none = AsyncTowerClient([{"url": served[0][1]}])
        try:
            return await some.is_ready(TOWER, TEXT_TOWER), await none.is_ready(TOWER, TEXT_TOWER)
        finally:
            await none.close()
            await _stop(some, served)

    assert _run(run()) == (True, False)
