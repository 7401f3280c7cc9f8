"""The gateway process: a grpc.aio server with the Retrieval service, grpc.health.v1 and reflection.

`create_server(settings, address)` builds a server bound to `address` (tests pass port 0);
`main()` is the process entry point (`python -m gateway.server`, started by `cxr serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cxr.catalog import load_catalog
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from gateway.embedder import TritonEmbedder
from gateway.indexes import IndexSet
from gateway.service import RetrievalService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a full-size DICOM or a 2.3 MB JPEG, with room to spare
HEALTH_PERIOD_S = 1.0
log = logging.getLogger("cxr.gateway")


class Gateway:
    """A built server and the task that keeps its health status true."""

    def __init__(self, server: grpc.aio.Server, service: RetrievalService, health: health_aio.HealthServicer):
        self.server = server
        self.service = service
        self.health = health
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        await self.server.start()
        self._watch = asyncio.create_task(self._watch_health())

    async def _watch_health(self) -> None:
        """SERVING only while Triton has the active model's towers ready and its index is loaded."""
        service = self.service
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, service.indexes.refresh)
            model = service.catalog.get(service.active_model)
            ready = bool(model) and service.indexes.has(model.name) and await service.embedder.is_ready(model)
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch:
            self._watch.cancel()
        await self.server.stop(grace)
        await self.service.embedder.close()
        self.service.executor.shutdown(wait=False)


def create_server(settings: Settings, address: str | None = None, embedder=None) -> tuple[Gateway, int]:
    """A gateway over the settings' model repository and indexes, bound to `address`."""
    catalog = load_catalog(settings.model_repository)
    indexes = IndexSet(settings.index_dir, catalog, use_gpu=settings.use_gpu)
    service = RetrievalService(catalog, indexes, embedder or TritonEmbedder(settings.triton_grpc_url),
                               settings.model, ThreadPoolExecutor(max_workers=4, thread_name_prefix="decode"))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    pb_grpc.add_RetrievalServicer_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address or settings.gateway_address)
    return Gateway(server, service, health), port


async def serve(settings: Settings) -> None:
    gateway, port = create_server(settings)
    await gateway.start()
    log.info("gateway listening on %s:%d (model %s, Triton %s)", settings.gateway_host, port, settings.model,
             settings.triton_grpc_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(load_settings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
