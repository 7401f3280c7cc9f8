"""Several Triton endpoints behind one client: balance, eject, re-admit, retry.

A call goes to the endpoint with the fewest calls in flight (ties take turns). When it fails with
an error the caller names as "this endpoint is down" (`failover_on`), the endpoint is ejected and
the call is tried on another one while the caller's deadline allows. Ejected endpoints are probed
every `period_s` and re-admitted once they answer ready; they stay a last resort meanwhile, so a
single endpoint is always tried and behaves as if there were no pool. The endpoints may change while
calls run (`set_urls`, fed by cxr.triton.discovery from DNS): kept ones keep their state, new ones join
in rotation, and those that left finish the calls they hold.

The pool knows nothing of Triton's API: an endpoint is a URL and a client, which error means
"down" and what "ready" means are the client's to say. Who counts ejections (the gateway's
metrics) watches through a PoolObserver.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cxr.settings import SettingsError

log = logging.getLogger("cxr.triton")
R = TypeVar("R")
CHECK_PERIOD_S = 1.0


@dataclass(eq=False)  # identity, not value: two endpoints are never the same one
class Endpoint:
    url: str
    client: Any  # a tritonclient asyncio client in production, a fake in tests
    in_flight: int = 0
    ejected: bool = False


class PoolObserver(abc.ABC):
    """What the pool tells about its endpoints, for whoever keeps count (the gateway's metrics)."""

    @abc.abstractmethod
    def joined(self, url: str) -> None:
        """The endpoint is in the pool, in rotation: called once per endpoint, when the pool is made."""

    @abc.abstractmethod
    def ejected(self, url: str) -> None:
        """A failed call took the endpoint out of rotation."""

    @abc.abstractmethod
    def readmitted(self, url: str) -> None:
        """The endpoint answered (a call or the probe) and is back in rotation."""

    @abc.abstractmethod
    def left(self, url: str) -> None:
        """The endpoint is no longer in the pool (its address left DNS): forget it."""


class Unobserved(PoolObserver):
    """Nobody keeps count."""

    def joined(self, url: str) -> None:
        pass

    def ejected(self, url: str) -> None:
        pass

    def readmitted(self, url: str) -> None:
        pass

    def left(self, url: str) -> None:
        pass


class EndpointPool:
    def __init__(self, endpoints: Sequence[Endpoint], probe: Callable[[Endpoint], Awaitable[bool]],
                 failover_on: type[BaseException] | tuple[type[BaseException], ...],
                 observer: PoolObserver | None = None, period_s: float = CHECK_PERIOD_S,
                 logger: logging.Logger = log):
        """`logger` takes the ejection and re-admission lines: the gateway passes its own."""
        _check_urls([e.url for e in endpoints])
        self.endpoints = list(endpoints)
        self._probe = probe
        self._failover_on = failover_on
        self._observer = observer or Unobserved()
        self.period_s = period_s
        self._log = logger
        self._turn = itertools.count()
        self._watcher: asyncio.Task | None = None
        for endpoint in self.endpoints:
            self._observer.joined(endpoint.url)

    async def call(self, attempt: Callable[[Endpoint, float | None], Awaitable[R]], timeout: float | None) -> R:
        """`attempt(endpoint, seconds_left)` on the best endpoint, then on the next untried one after a
        failover error while time is left; the last error is raised when no endpoint or time is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: set[Endpoint] = set()
        while True:
            endpoint = self._pick(tried)
            tried.add(endpoint)
            try:
                result = await self._attempt(endpoint, attempt, deadline)
            except self._failover_on:
                self._eject(endpoint)
                if self._pick(tried) is None or _seconds_left(deadline) == 0:
                    raise
                continue
            self._admit(endpoint)  # it answered: whatever the probe says, it serves
            return result

    def set_urls(self, urls: Sequence[str], make: Callable[[str], Endpoint]) -> list[Endpoint]:
        """The pool's endpoints become `urls`: an endpoint already there is kept as it is (its calls in flight,
        ejected or not), `make(url)` builds each new one, which joins in rotation. Returns the endpoints that
        left; their calls in flight finish, and their owner closes them once `in_flight` is 0."""
        _check_urls(list(urls))
        current = {e.url: e for e in self.endpoints}
        joined = [make(url) for url in urls if url not in current]
        made = {e.url: e for e in joined}
        left = [e for url, e in current.items() if url not in urls]
        self.endpoints = [current.get(url) or made[url] for url in urls]  # one assignment: readers see old or new
        for endpoint in joined:
            self._observer.joined(endpoint.url)
        for endpoint in left:
            self._observer.left(endpoint.url)
        return left

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _pick(self, tried: set[Endpoint]) -> Endpoint | None:
        """Untried endpoints: in rotation before ejected ones, then the fewest in flight; the scan starts
        one further each time so that equal endpoints take turns."""
        start = next(self._turn) % len(self.endpoints)
        order = self.endpoints[start:] + self.endpoints[:start]
        return min((e for e in order if e not in tried), key=lambda e: (e.ejected, e.in_flight), default=None)

    async def _attempt(self, endpoint: Endpoint, attempt, deadline: float | None):
        endpoint.in_flight += 1
        try:
            return await attempt(endpoint, _seconds_left(deadline))
        finally:
            endpoint.in_flight -= 1

    def _eject(self, endpoint: Endpoint) -> None:
        if endpoint.ejected or endpoint not in self.endpoints:  # one that left is not watched nor counted
            return
        endpoint.ejected = True
        self._observer.ejected(endpoint.url)
        self._log.warning("Triton endpoint %s ejected after a failed call: the others take its calls; checking it "
                    "every %g s", endpoint.url, self.period_s)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())

    def _admit(self, endpoint: Endpoint) -> None:
        if not endpoint.ejected or endpoint not in self.endpoints:
            return
        endpoint.ejected = False
        self._observer.readmitted(endpoint.url)
        self._log.info("Triton endpoint %s is ready again: back in rotation", endpoint.url)

    async def _watch(self) -> None:
        """Probe the ejected endpoints every period until none is left out. An active check rather than
        a cool-down: no client's query is spent finding out that an endpoint is still down."""
        while any(e.ejected for e in self.endpoints):
            await asyncio.sleep(self.period_s)
            ejected = [e for e in self.endpoints if e.ejected]
            for endpoint, ready in zip(ejected, await asyncio.gather(*map(self._ready, ejected))):
                if ready:
                    self._admit(endpoint)

    async def _ready(self, endpoint: Endpoint) -> bool:
        try:
            return bool(await self._probe(endpoint))
        except Exception:  # noqa: BLE001 - a probe that breaks in any way says "not ready"; the watcher lives on
            return False


def _seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _check_urls(urls: list[str]) -> None:
    if not urls:
        raise SettingsError("no Triton endpoint: set triton_urls (CXR_TRITON_URLS=host:8001,host:8001) or leave it "
                         "empty for triton_host:triton_grpc_port")
    twice = sorted({url for url in urls if urls.count(url) > 1})
    if twice:
        raise SettingsError(f"triton_urls names {twice} more than once: list each Triton endpoint once")

