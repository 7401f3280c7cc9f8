"""RetrievalClient: the token on every call, retries with backoff on UNAVAILABLE, nothing else retried."""

import asyncio
import threading

import grpc
import pytest

from cxr.client import RetrievalClient
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc


class Flaky(pb_grpc.RetrievalServicer):
    """UNAVAILABLE for the first `failures` calls, then an answer naming the bearer token it saw."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE):
        self.failures, self.code, self.calls = failures, code, 0

    async def SearchByText(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, "not now")
        token = dict(context.invocation_metadata()).get("authorization", "")
        return pb.SearchResponse(model=token)


@pytest.fixture
def serve():
    loops = []

    def start(servicer):
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def up():
            server = grpc.aio.server()
            pb_grpc.add_RetrievalServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        server, port = asyncio.run_coroutine_threadsafe(up(), loop).result(10)
        loops.append((loop, server))
        return f"127.0.0.1:{port}"

    yield start
    for loop, server in loops:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_unavailable_is_retried_and_the_token_goes_with_every_call(serve):
    servicer = Flaky(failures=2)
    with RetrievalClient(serve(servicer), token="t0k3n", retries=3) as client:
        assert client.search_text("effusion").model == "Bearer t0k3n"
    assert servicer.calls == 3


def test_retries_run_out(serve):
    servicer = Flaky(failures=5)
    with RetrievalClient(serve(servicer), retries=1) as client, pytest.raises(grpc.RpcError) as error:
        client.search_text("effusion")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 2


def test_other_errors_are_not_retried(serve):
    servicer = Flaky(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with RetrievalClient(serve(servicer), retries=3) as client, pytest.raises(grpc.RpcError):
        client.search_text("effusion")
    assert servicer.calls == 1
