"""Admission control for the Retrieval service: what the gateway takes on before doing any work.

- a cap on calls in flight, overall and per client (RESOURCE_EXHAUSTED beyond either),
- a token bucket per principal, charged per query (a BatchSearch of 100 queries costs 100 tokens;
  RESOURCE_EXHAUSTED with RetryInfo, the wait, in its details: gateway/error_details.py),
- a default deadline for calls that bring none (DEADLINE_EXCEEDED),
- draining: once the gateway is stopping, new calls get UNAVAILABLE (clients retry elsewhere)
  while those in flight finish,
- before identity is checked (`RefusalLimiter`): a client address whose calls keep being refused
  (no or bad credential, no scope) is itself refused for a while, so that a flood of unauthenticated
  calls costs a bucket lookup, not a token check and an audit line each.
Health checks and reflection are never refused here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from cxr.errors import ResourceExhaustedError
from cxr.images import DecodeBusyError, PixelBudget
from gateway import calls

MAX_BATCH_QUERIES = 256  # queries in one BatchSearch
THROTTLED = "refused_rate"  # the refusal reason of RefusalLimiter (the audit trail summarises these)
MAX_TRACKED_PRINCIPALS = 10_000  # buckets of the least recently seen go first
REFUSED = ("unauthenticated", "permission_denied")  # outcomes a RefusalLimiter charges the address for


@dataclass(frozen=True)
class Limits:
    max_concurrent_rpcs: int = 64
    max_concurrent_per_client: int = 16  # so one principal cannot hold every slot
    rate_per_s: float = 50.0  # queries per second per principal; 0: no rate limit
    burst: int = 100
    default_deadline_s: float = 30.0


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, now: float):
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """0 when the call may go (its cost taken), else the seconds until it may. A call costing more
        than the bucket holds goes once one token is there and leaves the bucket in debt: a batch of
        256 queries under a burst of 100 is answered, and its client waits for the refill after it."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= cost
            return 0.0
        return self.wait(now)

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0: now), taking nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED_PRINCIPALS:
            self._buckets.popitem(last=False)
        return bucket

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 when `key` may go now (its cost taken), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        return self._bucket(key, now).take(now, cost)

    def wait(self, key: str) -> float:
        """What `take` would answer, taking nothing: for a check before work that may not happen."""
        if self.rate <= 0 or key not in self._buckets:
            return 0.0
        return self._buckets[key].wait(self.clock())


def query_count(request) -> int:
    """How many queries a call asks for: a batch's size, else 1 (a malformed batch counts as one)."""
    queries = getattr(request, "queries", None)
    return max(1, len(queries)) if queries is not None else 1


def _client_key(context) -> str:
    """The principal, or without auth the client's address (the HTTP client's for calls from the
    gateway's HTTP side)."""
    call = calls.current()
    if call is not None and call.principal:
        return call.principal
    return calls.client_address(context)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limits: Limits = Limits(), rates: RateLimiter | None = None):
        self.limits = limits
        self.rates = rates or RateLimiter(limits.rate_per_s, limits.burst)
        self.in_flight = 0
        self.per_client: Counter[str] = Counter()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.startswith(calls.RETRIEVAL_PREFIX):
            return handler
        return calls.wrap_unary(handler, self._admit)

    async def _admit(self, run, request, context):
        client = _client_key(context)
        await self._check(client, request, context)
        self.in_flight += 1
        self.per_client[client] += 1
        self._idle.clear()
        try:
            return await self._within_deadline(run, context)
        finally:
            self.in_flight -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
            if self.in_flight == 0:
                self._idle.set()

    async def _check(self, client: str, request, context) -> None:
        if self.draining:
            await calls.abort(context, grpc.StatusCode.UNAVAILABLE,
                              "the gateway is shutting down: retry, another replica will answer", "draining")
        if self.in_flight >= self.limits.max_concurrent_rpcs:
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.in_flight} calls in flight, the gateway's limit (max_concurrent_rpcs): "
                              "retry with backoff", "concurrency")
        if self.per_client[client] >= self.limits.max_concurrent_per_client:
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.per_client[client]} of this client's calls are in flight, the limit per client "
                              "(max_concurrent_rpcs_per_client): wait for them, or send a BatchSearch", "concurrency")
        wait = self.rates.take(client, query_count(request))
        if wait:
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"rate limit of {self.limits.rate_per_s:g} queries/s (burst {self.limits.burst}) "
                              "reached: "
                              f"retry in {math.ceil(wait * 1000)} ms", "rate_limit", retry_after_s=wait)

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


class RefusalLimiter(grpc.aio.ServerInterceptor):
    """Before the audit trail and identity: each call from an address that the auth interceptor refuses
    takes a token from that address's bucket; once it is empty, the address's calls are refused at
    once (RESOURCE_EXHAUSTED, reason `refused_rate`) until it refills. Accepted calls cost nothing
    here, so clients behind one address (a NAT, the PACS router) are not throttled for each other's
    traffic, only for a stream of refusals."""

    def __init__(self, refusals: RateLimiter):
        self.refusals = refusals

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.startswith(calls.RETRIEVAL_PREFIX):
            return handler
        return calls.wrap_unary(handler, self._limited)

    async def _limited(self, run, request, context):
        address = calls.client_address(context)
        wait = self.refusals.wait(address)
        if wait:
            await calls.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many refused calls from this address: retry in {math.ceil(wait * 1000)} ms with a "
                              "valid credential", THROTTLED, retry_after_s=wait)
        try:
            return await run()
        finally:
            call = calls.current()
            if call is not None and call.rejected in REFUSED:
                self.refusals.take(address)


def _rejected(reason: str) -> None:
    call = calls.current()
    if call is not None:
        call.rejected = reason


class OverloadedError(ResourceExhaustedError):
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
