"""Admission control for the Retrieval service: what the gateway takes on before doing any work.

- a cap on calls in flight (RESOURCE_EXHAUSTED beyond it),
- a token bucket per principal (RESOURCE_EXHAUSTED with `retry-after-ms` in the trailers),
- a default deadline for calls that bring none (DEADLINE_EXCEEDED),
- draining: once the gateway is stopping, new calls get UNAVAILABLE (clients retry elsewhere)
  while those in flight finish.
Health checks and reflection are never refused here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from cxr.errors import CxrError
from cxr.images import DecodeBusyError, PixelBudget
from gateway import calls

RETRY_AFTER_KEY = "retry-after-ms"
MAX_TRACKED_PRINCIPALS = 10_000  # buckets of the least recently seen go first


@dataclass(frozen=True)
class Limits:
    max_concurrent_rpcs: int = 64
    rate_per_s: float = 50.0  # per principal; 0: no rate limit
    burst: int = 100
    default_deadline_s: float = 30.0


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, now: float):
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED_PRINCIPALS:
            self._buckets.popitem(last=False)
        return bucket.take(now)


def _client_key(context) -> str:
    """The principal, or without auth the client's address (without its port; the HTTP client's for
    calls from the gateway's HTTP side)."""
    call = calls.current()
    if call is not None and call.principal:
        return call.principal
    return calls.client_peer(context).rsplit(":", 1)[0]


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self.rates = RateLimiter(limits.rate_per_s, limits.burst)
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.startswith(calls.RETRIEVAL_PREFIX):
            return handler
        return calls.wrap_unary(handler, self._admit)

    async def _admit(self, run, request, context):
        if self.draining:
            await calls.abort(context, grpc.StatusCode.UNAVAILABLE,
                              "the gateway is shutting down: retry, another replica will answer", "draining")
        if self.in_flight >= self.limits.max_concurrent_rpcs:
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.in_flight} calls in flight, the gateway's limit (max_concurrent_rpcs): "
                              "retry with backoff", "concurrency")
        wait = self.rates.take(_client_key(context))
        if wait:
            retry_ms = math.ceil(wait * 1000)
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"rate limit of {self.limits.rate_per_s:g} calls/s (burst {self.limits.burst}) reached: "
                              f"retry in {retry_ms} ms", "rate_limit", ((RETRY_AFTER_KEY, str(retry_ms)),))
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._within_deadline(run, context)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _within_deadline(self, run, context):
        call = calls.current()
        remaining = context.time_remaining()
        if remaining is not None:
            if call is not None:
                call.deadline = time.monotonic() + remaining
            return await run()
        default = self.limits.default_deadline_s
        if call is not None:
            call.deadline = time.monotonic() + default
        try:
            return await asyncio.wait_for(run(), default)
        except TimeoutError:
            await calls.abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"no answer within the gateway's default deadline of {default:g} s "
                              "(send a deadline to choose another)", "deadline")

    def drain(self) -> None:
        """Refuse new calls from now on."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """True once no admitted call is in flight, False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def _rejected(reason: str) -> None:
    call = calls.current()
    if call is not None:
        call.rejected = reason


class OverloadedError(CxrError):
    """The gateway has more of this work queued than it takes on."""


class DecodeQueue:
    """Image decoding in a pool of `threads`, with at most `limit` images waiting or in decoding, and
    at most `max_pixels` being decoded at once (the decoder holds them in `pixels`, a PixelBudget, and
    waits for them until the call's deadline): a burst of large images waits or is refused
    (RESOURCE_EXHAUSTED) instead of piling up in memory."""

    def __init__(self, threads: int, limit: int, max_pixels: int):
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.limit = limit
        self.queued = 0
        self.pixels = PixelBudget(max_pixels)

    async def run(self, function, *args):
        if self.queued >= self.limit:
            _rejected("decode_queue")
            raise OverloadedError(f"{self.queued} images are being decoded, the gateway's limit (max_decode_queue): "
                                  "retry with backoff")
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        except DecodeBusyError:
            _rejected("decode_pixels")
            raise
        finally:
            self.queued -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False)
