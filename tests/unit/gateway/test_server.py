"""The gateway process's server: its health says NOT_SERVING from the moment it listens until a check
has found its model ready and its index loaded (grpc's health servicer would say SERVING before)."""

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import server as gateway_server
from gateway.embedding import Embedder
from support import make_settings


class IdleEmbedder(Embedder):
    async def embed_texts(self, model, texts, timeout=None):
        raise AssertionError("not asked")

    async def embed_images(self, model, pixels, timeout=None):
        raise AssertionError("not asked")

    async def is_ready(self, model):
        return True

    async def close(self):
        pass


async def _statuses(port: int) -> list[int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [(await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
                for name in ("", gateway_server.SERVICE_NAME)]


def test_health_says_not_serving_until_the_first_check(tmp_path, monkeypatch):
    async def no_checks(self):
        await asyncio.sleep(3600)

    monkeypatch.setattr(gateway_server.Gateway, "_watch_health", no_checks)
    settings = make_settings(tmp_path, tmp_path / "cache")

    async def scenario():
        gateway, port = gateway_server.create_server(settings, "127.0.0.1:0", embedder=IdleEmbedder())
        await gateway.start()
        try:
            return await _statuses(port)
        finally:
            await gateway.stop(grace=0)

    assert asyncio.run(scenario()) == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
