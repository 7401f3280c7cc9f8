"""Token buckets per principal: a burst, then the refill rate, how long to wait, and what a call costs;
the decode queue's pixel budget; and the admission interceptors over real gRPC (support.interceptor_server):
concurrency caps overall and per client, the rate limit's retry hint, the default deadline, draining, and
the throttle of addresses whose calls keep being refused."""

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxr.images import DecodeBusyError
from cxr.metadata_keys import RETRY_AFTER_KEY
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import auth, calls
from gateway.admission import (
    AdmissionInterceptor,
    DecodeQueue,
    Limits,
    RateLimiter,
    RefusalLimiter,
    TokenBucket,
    query_count,
)
from gateway.errors import status_of
from support.interceptor_server import search


def test_a_bucket_allows_its_burst_then_says_when_to_retry():
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_principals_have_buckets_of_their_own():
    clock = iter([0.0] * 10)
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=lambda: next(clock))
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") > 0
    assert limiter.take("bob") == 0.0


def test_rate_zero_means_no_limit():
    limiter = RateLimiter(rate_per_s=0.0, burst=0)
    assert all(limiter.take("x") == 0.0 for _ in range(1000))


def test_a_call_costing_more_than_the_bucket_goes_once_and_leaves_a_debt():
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=0.0)
    assert bucket.take(0.0, cost=20) == 0.0  # a batch of 20 queries under a burst of 5
    assert bucket.take(0.0) == pytest.approx(1.6)  # 16 tokens short of one: 1.6 s at 10/s
    assert bucket.take(1.6) == 0.0


def test_wait_takes_nothing():
    clock = iter([0.0] * 10)
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=lambda: next(clock))
    assert limiter.wait("alice") == 0.0
    assert limiter.take("alice") == 0.0
    assert limiter.wait("alice") == pytest.approx(1.0) == limiter.wait("alice")


@pytest.mark.parametrize("message, cost", [
    (pb.SearchByTextRequest(text="x"), 1),
    (pb.BatchSearchRequest(queries=[pb.SearchQuery(text=pb.SearchByTextRequest(text="x"))] * 7), 7),
    (pb.BatchSearchRequest(), 1),
    (object(), 1),  # calls.MALFORMED
])
def test_a_batch_costs_one_token_per_query(message, cost):
    assert query_count(message) == cost


def test_the_decode_queue_refuses_pixels_past_its_budget_at_the_deadline():
    queue = DecodeQueue(threads=2, limit=8, max_pixels=100)
    holding, release = threading.Event(), threading.Event()

    def decode(pixels: int, deadline: float) -> int:
        with queue.pixels.hold(pixels, deadline):
            holding.set()
            release.wait(10)
            return pixels

    async def main():
        first = asyncio.ensure_future(queue.run(decode, 80, time.monotonic() + 10))
        await asyncio.to_thread(holding.wait, 10)
        with pytest.raises(DecodeBusyError, match="max_decoding_pixels"):
            await queue.run(decode, 30, time.monotonic() + 0.05)
        release.set()
        return await first, await queue.run(decode, 30, time.monotonic() + 10)

    try:
        assert asyncio.run(main()) == (80, 30)
    finally:
        queue.shutdown()
    assert status_of(DecodeBusyError("busy")) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_calls_beyond_the_concurrency_cap_are_refused(make_server):
    server = make_server(AdmissionInterceptor(Limits(max_concurrent_rpcs=2, rate_per_s=0)))
    slow = [server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=800)) for _ in range(2)]
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_rpcs" in error.value.details()
    assert all(f.result().model == "fake" for f in slow)
    assert search(server.stub)[0].model == "fake"  # room again


def test_the_rate_limit_says_when_to_retry(make_server):
    server = make_server(AdmissionInterceptor(Limits(rate_per_s=1.0, burst=3)))
    for _ in range(3):
        search(server.stub)
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.value.trailing_metadata())
    assert 0 < int(trailers[RETRY_AFTER_KEY]) <= 1000 and len(trailers[calls.REQUEST_ID_KEY]) == 32


def test_a_call_without_a_deadline_gets_the_default_one(make_server):
    server = make_server(AdmissionInterceptor(Limits(default_deadline_s=0.2, rate_per_s=0)))
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub, milliseconds=2000)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "default deadline" in error.value.details()
    assert search(server.stub, milliseconds=2000, timeout=5)[0].model == "fake"  # its own deadline wins


def test_draining_refuses_new_calls_and_waits_for_those_in_flight(make_server):
    admission = AdmissionInterceptor(Limits(rate_per_s=0))
    server = make_server(admission)
    in_flight = server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=600))
    time.sleep(0.2)
    admission.drain()
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.value.details()
    assert server.run(admission.wait_idle(5)) is True
    assert in_flight.result().model == "fake"
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # health is never refused by admission


class PrincipalFromMetadata(grpc.aio.ServerInterceptor):
    """Stands in for auth: the caller's principal is its `x-principal` metadata."""

    async def intercept_service(self, continuation, details):
        call = calls.current()
        call.principal = dict(details.invocation_metadata or ()).get("x-principal", "")
        return await continuation(details)


def test_one_client_cannot_hold_every_slot(make_server):
    server = make_server(PrincipalFromMetadata(),
                         AdmissionInterceptor(Limits(max_concurrent_rpcs=10, max_concurrent_per_client=2,
                                                     rate_per_s=0)))
    alice = (("x-principal", "alice"),)
    slow = [server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=800), metadata=alice)
            for _ in range(2)]
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub, metadata=alice)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per client" in error.value.details()
    assert search(server.stub, metadata=(("x-principal", "bob"),))[0].model == "fake"
    assert all(f.result().model == "fake" for f in slow)
    assert search(server.stub, metadata=alice)[0].model == "fake"  # alice's slots are free again


class RefuseAllButGood:
    def verify(self, token):
        if token != "good":
            raise auth.AuthError("not a credential this test accepts")
        return auth.Principal("good", "api_key", frozenset({"search"}))


def test_an_address_whose_calls_keep_being_refused_is_throttled_before_auth(make_server):
    server = make_server(RefusalLimiter(RateLimiter(rate_per_s=0.5, burst=3)), auth.AuthInterceptor(RefuseAllButGood()))
    bad = (("authorization", "Bearer forged"),)
    codes = []
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as error:
            search(server.stub, metadata=bad)
        codes.append(error.value.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert "refused calls" in error.value.details() and int(dict(error.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
    with pytest.raises(grpc.RpcError) as error:  # the address is throttled whatever it sends now
        search(server.stub, metadata=(("authorization", "Bearer good"),))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_accepted_calls_cost_an_address_nothing(make_server):
    server = make_server(RefusalLimiter(RateLimiter(rate_per_s=0.5, burst=1)), auth.AuthInterceptor(RefuseAllButGood()))
    for _ in range(5):
        assert search(server.stub, metadata=(("authorization", "Bearer good"),))[0].model == "fake"
