"""A grpc.aio server of chosen interceptors in front of a fake Retrieval service, on loopback, for the
unit tests of each interceptor (tests/unit/gateway/conftest.py's `make_server`).

The fake answers SearchByText after `top_k` milliseconds, so tests can hold calls in flight; a text
ending in "crash" raises an unforeseen error that quotes the query."""

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import calls
from gateway.errors import grpc_errors


class SlowService(pb_grpc.RetrievalServicer):
    @grpc_errors
    async def SearchByText(self, request, context):
        if request.text.endswith("crash"):
            raise ZeroDivisionError(f"a bug that quotes the query: {request.text}")
        with calls.stage("triton"):
            await asyncio.sleep(request.top_k / 1000)
        return pb.SearchResponse(model="fake", hits=[pb.Hit(rank=1, study_uid="s1", findings="small effusion",
                                                            impression="no acute disease")])


class Server:
    """A grpc.aio server with `interceptors` on its own loop in a thread."""

    def __init__(self, interceptors):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def start():
            server = grpc.aio.server(interceptors=interceptors)
            pb_grpc.add_RetrievalServicer_to_server(SlowService(), server)
            health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.RetrievalStub(self.channel)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self):
        self.channel.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)


def search(stub, milliseconds=1, **kwargs):
    """SearchByText held `milliseconds` by the fake; (response, call)."""
    return stub.SearchByText.with_call(pb.SearchByTextRequest(text="effusion", top_k=milliseconds), **kwargs)
