"""Triton endpoints from DNS: every address a name resolves to is an endpoint of the pool, looked up again
every period (settings.triton_dns, e.g. a Kubernetes headless Service).

Why not gRPC's own `dns:///` resolver with round_robin: it looks the name up again only when a connection
breaks, so a Triton pod the autoscaler adds gets no call until some other pod goes away. Looking up on a
timer finds it within a period, and it joins the pool's least-in-flight rotation, ejection and per-endpoint
metrics like any other endpoint. An endpoint whose address leaves DNS (a pod scaled down, or no longer
ready) leaves the pool; its calls in flight finish before its channel is closed.

A lookup that fails or finds nothing changes nothing: the endpoints keep serving (or failing over) as they
were, so a DNS hiccup never empties the pool. Until the first lookup finds addresses the pool holds the name
itself, which gRPC resolves to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cxr.triton.pool import Endpoint, EndpointPool
from cxr.triton.pool import log as pool_log
from cxr.triton.request import connection

Resolver = Callable[[str, int], Awaitable[list[str]]]
LOOKUP_TIMEOUT_S = 5.0  # a resolver that hangs is given up on, and asked again at the next period


@dataclass(frozen=True)
class DnsTarget:
    """The name to look up, the port every address serves on, how often to look, and how to connect to
    one address (`connect(url)`: tritonclient's keyword arguments, cxr.triton.request.connection)."""

    host: str
    port: int
    period_s: float
    connect: Callable[[str], dict]

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


def address_url(address: str, port: int) -> str:
    """A gRPC target for one IP address: IPv6 in brackets."""
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver: /etc/hosts, search domains, DNS), as sorted,
    distinct gRPC targets."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({address_url(info[4][0], port) for info in infos})


class DnsEndpoints:
    """Keeps `pool`'s endpoints equal to the addresses of `target`, looking every `target.period_s`."""

    def __init__(self, pool: EndpointPool, target: DnsTarget, make: Callable[[str], Endpoint],
                 close: Callable[[Endpoint], Awaitable[None]], resolver: Resolver = resolve,
                 logger: logging.Logger = pool_log):
        """`make(url)` builds an endpoint for a new address; `close(endpoint)` releases one that left."""
        self.pool = pool
        self.target = target
        self._make = make
        self._close = close
        self.resolver = resolver
        self._log = logger
        self._leaving: list[Endpoint] = []
        self._task: asyncio.Task | None = None
        self._failing = False  # a failed lookup is logged once until one succeeds

    def start(self) -> None:
        """Look now and then every period, on the running loop; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def refresh(self) -> None:
        """One look: the pool follows what the name resolves to now; endpoints that left and hold no call are
        closed."""
        try:
            urls = await asyncio.wait_for(self.resolver(self.target.host, self.target.port), LOOKUP_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            self._failed(f"the lookup failed ({str(exc) or type(exc).__name__})")
        else:
            if urls:
                self._follow(urls)
            else:
                self._failed("it has no address")
        await self._close_idle()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for endpoint in self._leaving:
            await self._close(endpoint)
        self._leaving = []

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the endpoints must keep being looked after whatever one look meets
                self._log.exception("looking up Triton endpoints %s failed; trying again in %g s",
                                    self.target.url, self.target.period_s)
            await asyncio.sleep(self.target.period_s)

    def _follow(self, urls: list[str]) -> None:
        before = [e.url for e in self.pool.endpoints]
        if urls == before:
            return
        left = self.pool.set_urls(urls, self._make)
        self._leaving += left
        self._failing = False
        self._log.info("Triton endpoints of %s: %s (joined: %s; left: %s)", self.target.url, ", ".join(urls),
                       ", ".join(u for u in urls if u not in before) or "none",
                       ", ".join(e.url for e in left) or "none")

    def _failed(self, why: str) -> None:
        if not self._failing:
            self._log.warning("Triton endpoints of %s: %s; the pool keeps %s and looks again every %g s",
                              self.target.url, why, ", ".join(e.url for e in self.pool.endpoints),
                              self.target.period_s)
        self._failing = True

    async def _close_idle(self) -> None:
        idle = [e for e in self._leaving if e.in_flight == 0]
        self._leaving = [e for e in self._leaving if e.in_flight > 0]
        for endpoint in idle:
            await self._close(endpoint)


def dns_target(settings) -> DnsTarget | None:
    """The DNS name of settings.triton_dns (None when unset), connecting to each address with the settings'
    TLS files; the certificate is checked against the name, not the address."""
    if not settings.triton_dns:
        return None
    host, _, port = settings.triton_dns.rpartition(":")
    return DnsTarget(host, int(port), settings.triton_dns_refresh_s,
                     lambda url: connection(settings, url, server_name=host))
