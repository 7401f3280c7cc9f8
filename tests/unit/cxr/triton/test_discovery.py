"""Triton endpoints from DNS: the pool follows the addresses of a name (joined, kept, left), survives lookups
that fail or find nothing, closes endpoints that left once their calls finish, and, through the real
asyncio client, every address found gets calls."""

import asyncio
import logging
import socket

import numpy as np
import pytest

from cxr.processes import free_ports
from cxr.settings import Settings, SettingsError
from cxr.triton import discovery
from cxr.triton.client import AsyncTowerClient
from cxr.triton.discovery import DnsEndpoints, DnsTarget, address_url, dns_target, resolve
from cxr.triton.pool import Endpoint, EndpointPool
from support.fake_triton import TOWER, Counting, FakeTriton, serve_on

PIXELS = np.zeros((1, 4, 4, 3), np.uint8)
SEED = "triton-pods:8001"


class Down(Exception):
    pass


class Client:
    def __init__(self, url: str):
        self.url = url
        self.closed = False
        self.gate: asyncio.Event | None = None

    async def answer(self) -> str:
        if self.gate is not None:
            await self.gate.wait()
        return self.url


class Lookups:
    """A resolver that answers what `answers` holds next: a list of URLs, or an exception to raise."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _setup(lookups: Lookups, observer: Counting | None = None) -> tuple[EndpointPool, DnsEndpoints, list]:
    closed: list[str] = []

    async def probe(endpoint):
        return True

    async def close(endpoint):
        endpoint.client.closed = True
        closed.append(endpoint.url)

    pool = EndpointPool([Endpoint(SEED, Client(SEED))], probe, Down, observer)
    target = DnsTarget("triton-pods", 8001, 0.05, lambda url: {"url": url})
    return pool, DnsEndpoints(pool, target, lambda url: Endpoint(url, Client(url)), close, lookups), closed


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def _urls(pool: EndpointPool) -> list[str]:
    return [e.url for e in pool.endpoints]


def test_the_pool_follows_the_addresses_and_closes_what_left():
    observer = Counting()
    lookups = Lookups(["10.0.0.1:8001", "10.0.0.2:8001"], ["10.0.0.2:8001", "10.0.0.3:8001"])

    async def run():
        pool, dns, closed = _setup(lookups, observer)
        await dns.refresh()
        first, kept = _urls(pool), pool.endpoints[1]
        await dns.refresh()
        return first, _urls(pool), kept is pool.endpoints[0], closed

    first, second, same_object, closed = _run(run())
    assert first == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert second == ["10.0.0.2:8001", "10.0.0.3:8001"] and same_object
    assert closed == [SEED, "10.0.0.1:8001"]
    assert observer.up == {"10.0.0.2:8001": 1, "10.0.0.3:8001": 1}
    assert lookups.asked == [("triton-pods", 8001)] * 2


@pytest.mark.parametrize("failure", [OSError("Name or service not known"), []], ids=["lookup fails", "no address"])
def test_a_lookup_that_fails_or_finds_nothing_keeps_the_endpoints_and_is_logged_once(failure, caplog):
    lookups = Lookups(["10.0.0.1:8001"], failure, failure, failure, ["10.0.0.1:8001", "10.0.0.2:8001"])

    async def run():
        pool, dns, _ = _setup(lookups)
        seen = []
        for _ in range(5):
            await dns.refresh()
            seen.append(_urls(pool))
        return seen

    with caplog.at_level(logging.WARNING, logger="cxr.triton"):
        seen = _run(run())
    assert seen == [["10.0.0.1:8001"]] * 4 + [["10.0.0.1:8001", "10.0.0.2:8001"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the pool keeps 10.0.0.1:8001" in warnings[0]


def test_a_lookup_that_hangs_is_given_up_on(monkeypatch, caplog):
    monkeypatch.setattr(discovery, "LOOKUP_TIMEOUT_S", 0.05)

    async def hangs(host, port):
        await asyncio.sleep(60)

    async def run():
        pool, dns, _ = _setup(Lookups(["10.0.0.1:8001"]))
        await dns.refresh()
        dns.resolver = hangs
        await dns.refresh()
        return _urls(pool)

    with caplog.at_level(logging.WARNING, logger="cxr.triton"):
        assert _run(run()) == ["10.0.0.1:8001"]
    assert "the lookup failed (TimeoutError)" in caplog.text


def test_until_a_lookup_succeeds_the_pool_holds_the_name_itself():
    async def run():
        pool, dns, closed = _setup(Lookups(OSError("no such name yet")))
        await dns.refresh()
        return _urls(pool), closed

    assert _run(run()) == ([SEED], [])


def test_an_endpoint_that_left_is_closed_only_once_its_call_has_finished():
    lookups = Lookups(["10.0.0.1:8001"], ["10.0.0.2:8001"])

    async def run():
        pool, dns, closed = _setup(lookups)
        await dns.refresh()
        (leaving,) = pool.endpoints
        leaving.client.gate = asyncio.Event()
        call = asyncio.create_task(pool.call(lambda endpoint, left: endpoint.client.answer(), 5))
        await asyncio.sleep(0.01)
        await dns.refresh()  # 10.0.0.1 leaves DNS with a call in flight
        while_busy = list(closed)
        leaving.client.gate.set()
        answer = await call
        await dns.refresh()
        return while_busy, answer, closed

    while_busy, answer, closed = _run(run())
    assert while_busy == [SEED] and answer == "10.0.0.1:8001"
    assert closed == [SEED, "10.0.0.1:8001"]


def test_started_it_looks_every_period_and_close_stops_it():
    lookups = Lookups(["10.0.0.1:8001"])

    async def run():
        _, dns, _ = _setup(lookups)
        dns.start()
        dns.start()  # a second start does nothing
        await asyncio.sleep(0.3)
        await dns.close()
        looked = len(lookups.asked)
        await asyncio.sleep(0.15)
        return looked, len(lookups.asked)

    looked, later = _run(run())
    assert 3 <= looked <= 8 and later == looked


def test_resolve_asks_the_system_resolver_and_brackets_ipv6():
    urls = _run(resolve("localhost", 8001))
    assert "127.0.0.1:8001" in urls and urls == sorted(set(urls))
    assert address_url("fd00::1", 8001) == "[fd00::1]:8001" and address_url("10.1.2.3", 8001) == "10.1.2.3:8001"


def test_dns_target_comes_from_settings_and_checks_tls_against_the_name(tmp_path):
    assert dns_target(Settings()) is None
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")  # read by tritonclient only when a channel is made
    target = dns_target(Settings(triton_dns="triton-pods.cxr.svc:8001", triton_dns_refresh_s=2, triton_tls_ca=ca))
    assert (target.host, target.port, target.period_s) == ("triton-pods.cxr.svc", 8001, 2)
    connection = target.connect("10.0.0.7:8001")
    assert connection["url"] == "10.0.0.7:8001" and connection["ssl"] is True
    assert connection["channel_args"] == [("grpc.ssl_target_name_override", "triton-pods.cxr.svc")]
    assert "channel_args" not in dns_target(Settings(triton_dns="t:8001")).connect("10.0.0.7:8001")


@pytest.mark.parametrize("values, problem", [
    ({"triton_dns": "triton-pods"}, "host:port"),
    ({"triton_dns": "triton-pods:http"}, "host:port"),
    ({"triton_dns": "t:8001", "triton_urls": ("a:8001",)}, "not both"),
    ({"triton_dns": "t:8001", "triton_dns_refresh_s": 0}, "triton_dns_refresh_s"),
])
def test_bad_dns_settings_are_refused(values, problem):
    with pytest.raises(SettingsError, match=problem):
        Settings(**values)


def test_the_settings_endpoints_are_the_name_until_it_is_looked_up():
    assert Settings(triton_dns="triton-pods:8001").triton_endpoints == ("triton-pods:8001",)


def _loopback_two_available() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _loopback_two_available(), reason="127.0.0.2 cannot be bound here")
def test_through_the_real_client_every_address_found_gets_calls():
    """Two fake Tritons on one port at two loopback addresses, as two pods behind a headless Service."""
    (port,) = free_ports(1)
    fakes = [FakeTriton(1), FakeTriton(2)]

    async def run():
        servers = [await serve_on(fake, f"127.0.0.{i + 1}:{port}") for i, fake in enumerate(fakes)]
        lookups = Lookups([f"127.0.0.1:{port}"], [f"127.0.0.1:{port}", f"127.0.0.2:{port}"])
        target = DnsTarget("triton-pods", port, 0.05, lambda url: {"url": url})
        observer = Counting()
        client = AsyncTowerClient([{"url": f"127.0.0.1:{port}"}], observer, dns=target)
        client.dns.resolver = lookups  # the name is made up: what DNS would answer
        try:
            first = [await client.embed_images(TOWER, PIXELS, timeout=5) for _ in range(4)]
            for _ in range(500):  # until the second lookup finds the second pod
                if len(client.pool.endpoints) == 2:
                    break
                await asyncio.sleep(0.01)
            later = [await client.embed_images(TOWER, PIXELS, timeout=5) for _ in range(6)]
            return first, later, dict(observer.up)
        finally:
            await client.close()
            for server, _ in servers:
                await server.stop(0)

    first, later, up = _run(run())
    assert {int(v[0, 0]) for v in first} == {1}
    assert sorted(int(v[0, 0]) for v in later) == [1, 1, 1, 2, 2, 2]
    assert up == {f"127.0.0.1:{port}": 1, f"127.0.0.2:{port}": 1}
