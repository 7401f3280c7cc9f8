"""RetrievalClient: the token on every call, retries with backoff on UNAVAILABLE, waits out a rate limit
as long as the gateway asks, nothing else retried."""

import asyncio
import threading
import time

import grpc
import pytest

from cxr.client import RetrievalClient
from cxr.metadata_keys import RETRY_AFTER_KEY
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc


class Flaky(pb_grpc.RetrievalServicer):
    """UNAVAILABLE for the first `failures` calls, then an answer naming the bearer token it saw."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE, trailers=()):
        self.failures, self.code, self.trailers, self.calls = failures, code, trailers, 0

    async def SearchByText(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, "not now", self.trailers)
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


def test_a_rate_limit_is_waited_out_as_the_gateway_asks(serve):
    servicer = Flaky(failures=5, code=grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=((RETRY_AFTER_KEY, "20"),))
    with RetrievalClient(serve(servicer), retries=0) as client:
        started = time.monotonic()
        assert client.search_text("effusion").model == ""
    assert servicer.calls == 6 and time.monotonic() - started >= 5 * 0.020


def test_a_rate_limit_longer_than_the_deadline_is_not_waited_for(serve):
    servicer = Flaky(failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED, trailers=((RETRY_AFTER_KEY, "5000"),))
    with RetrievalClient(serve(servicer), deadline_s=1.0) as client, pytest.raises(grpc.RpcError) as error:
        client.search_text("effusion")
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and servicer.calls == 1


def test_resource_exhausted_without_a_wait_is_not_retried(serve):
    servicer = Flaky(failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with RetrievalClient(serve(servicer), retries=3) as client, pytest.raises(grpc.RpcError):
        client.search_text("effusion")
    assert servicer.calls == 1


def test_other_errors_are_not_retried(serve):
    servicer = Flaky(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with RetrievalClient(serve(servicer), retries=3) as client, pytest.raises(grpc.RpcError):
        client.search_text("effusion")
    assert servicer.calls == 1
