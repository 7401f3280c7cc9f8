"""Small fake Tritons (KServe v2 gRPC on loopback) for the Triton client's and the embedder's tests, and an
observer of the endpoint pool that counts what it hears."""

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from cxr.processes import free_ports
from cxr.towers import TensorSpec, TowerSpec
from cxr.triton.pool import PoolObserver

DIM = 3
TOWER = TowerSpec("fake_image", (TensorSpec("pixels", "uint8", (4, 4, 3)),),
                  TensorSpec("image_embeds", "float32", (DIM,)))
TEXT_TOWER = TowerSpec("fake_text", (), TOWER.output)


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers every image with the vector [index, 0, 0]; `refuse` makes inference a bad request."""

    def __init__(self, index: int, ready: bool = True):
        self.index = index
        self.ready = ready
        self.refuse = False
        self.infers = 0
        self.rows: list[int] = []  # the batch size of each request

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.ready)

    async def ModelInfer(self, request, context):
        self.infers += 1
        if self.refuse:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'pixels'")
        rows = request.inputs[0].shape[0]
        self.rows.append(rows)
        vectors = np.zeros((rows, DIM), np.float32)
        vectors[:, 0] = self.index
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=TOWER.output.name, datatype="FP32",
                                                                  shape=[rows, DIM])
        return service_pb2.ModelInferResponse(model_name=request.model_name, outputs=[output],
                                              raw_output_contents=[vectors.tobytes()])


async def serve(fake: FakeTriton) -> tuple[grpc.aio.Server, str]:
    """`fake` on a free loopback port: (the server, its URL)."""
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def serve_on(fake: FakeTriton, url: str) -> tuple[grpc.aio.Server, str]:
    """`fake` on the URL it had before (a Triton back from a restart)."""
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    server.add_insecure_port(url)
    await server.start()
    return server, url


def closed_url() -> str:
    """A loopback URL nothing listens on: a Triton that is down."""
    return f"127.0.0.1:{free_ports(1)[0]}"


class Counting(PoolObserver):
    """What an observer hears, kept as the gateway's two series keep it: up per endpoint, ejections."""

    def __init__(self):
        self.up: dict[str, int] = {}
        self.ejections: dict[str, int] = {}

    def joined(self, url: str) -> None:
        self.up[url] = 1
        self.ejections[url] = 0

    def ejected(self, url: str) -> None:
        self.up[url] = 0
        self.ejections[url] += 1

    def readmitted(self, url: str) -> None:
        self.up[url] = 1

    def left(self, url: str) -> None:
        del self.up[url], self.ejections[url]
