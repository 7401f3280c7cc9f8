"""Token buckets per principal: a burst, then the refill rate, and how long to wait; the decode queue's
pixel budget."""

import asyncio
import threading
import time

import grpc
import pytest

from cxr.images import DecodeBusyError
from gateway.admission import DecodeQueue, RateLimiter, TokenBucket
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
