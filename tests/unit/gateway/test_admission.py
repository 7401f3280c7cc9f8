"""Token buckets per principal: a burst, then the refill rate, how long to wait, and what a call costs;
the decode queue's pixel budget."""

import asyncio
import threading
import time

import grpc
import pytest

from cxr.images import DecodeBusyError
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway.admission import DecodeQueue, RateLimiter, TokenBucket, query_count
from gateway.errors import status_of


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
