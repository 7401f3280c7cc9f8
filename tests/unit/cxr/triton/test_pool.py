"""The endpoint pool with fake endpoints: least in flight, ejection, retry within the deadline, re-admission,
and what its observer hears."""

import asyncio
import logging

import pytest

from cxr.settings import SettingsError
from cxr.triton.pool import Endpoint, EndpointPool
from support.fake_triton import Counting

PERIOD_S = 0.01


class Down(Exception):
    """What the fake endpoints raise when they cannot be reached."""


class BadRequest(Exception):
    """A failure that says nothing about the endpoint."""


class Fake:
    """An endpoint's client: answers its URL, or raises what `fail` holds; `ready` is what the probe sees."""

    def __init__(self, url: str):
        self.url = url
        self.fail: Exception | None = None
        self.ready = True
        self.gate: asyncio.Event | None = None  # when set, calls wait for it
        self.calls: list[float | None] = []  # the seconds left each call was given

    async def answer(self, seconds_left: float | None) -> str:
        self.calls.append(seconds_left)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.url


def _pool(*urls: str, observer: Counting | None = None) -> tuple[EndpointPool, list[Fake]]:
    fakes = [Fake(url) for url in urls]

    async def probe(endpoint: Endpoint) -> bool:
        return endpoint.client.ready

    return EndpointPool([Endpoint(f.url, f) for f in fakes], probe, Down, observer, period_s=PERIOD_S), fakes


async def _answer(endpoint: Endpoint, seconds_left: float | None) -> str:
    return await endpoint.client.answer(seconds_left)


def _run(coroutine):
    """A broken pool must fail the test, not hang it."""
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def _up(observer: Counting, url: str) -> int:
    return observer.up[url]


def _ejections(observer: Counting, url: str) -> int:
    return observer.ejections[url]


def test_equal_endpoints_take_turns():
    async def run():
        pool, _ = _pool("a:1", "b:1", "c:1")
        return [await pool.call(_answer, 5) for _ in range(6)]

    answers = _run(run())
    assert sorted(answers) == ["a:1", "a:1", "b:1", "b:1", "c:1", "c:1"]


def test_a_call_goes_to_the_endpoint_with_the_fewest_in_flight():
    async def run():
        pool, (a, _) = _pool("a:1", "b:1")
        a.gate = asyncio.Event()
        held = asyncio.create_task(pool.call(_answer, 5))  # a is free of calls, first in turn: it gets this one
        await asyncio.sleep(0)
        answers = [await pool.call(_answer, 5) for _ in range(4)]
        a.gate.set()
        return answers, await held

    assert _run(run()) == (["b:1"] * 4, "a:1")


def test_a_down_endpoint_is_ejected_and_the_call_retried_on_another(caplog):
    observer = Counting()

    async def run():
        pool, (a, b) = _pool("a:1", "b:1", observer=observer)
        a.fail = Down("a:1 refused the connection")
        answers = [await pool.call(_answer, 5) for _ in range(4)]
        await pool.close()
        return answers, len(a.calls)

    with caplog.at_level(logging.INFO, logger="cxr.triton"):
        answers, calls_on_a = _run(run())
    assert answers == ["b:1"] * 4
    assert calls_on_a == 1  # ejected after its first failure, never picked again while b serves
    assert (_up(observer, "a:1"), _up(observer, "b:1"), _ejections(observer, "a:1")) == (0, 1, 1)
    assert [r.getMessage() for r in caplog.records if "ejected" in r.getMessage()] == [
        "Triton endpoint a:1 ejected after a failed call: the others take its calls; checking it every 0.01 s"]


def test_concurrent_failures_eject_and_log_once(caplog):
    observer = Counting()

    async def run():
        pool, (a, b) = _pool("a:1", "b:1", observer=observer)
        a.fail, a.gate = Down("gone"), asyncio.Event()
        b.gate = asyncio.Event()
        calls = [asyncio.create_task(pool.call(_answer, 5)) for _ in range(6)]
        await asyncio.sleep(0)
        a.gate.set()
        await asyncio.sleep(0)
        b.gate.set()
        answers = await asyncio.gather(*calls)
        await pool.close()
        return answers

    with caplog.at_level(logging.WARNING, logger="cxr.triton"):
        assert _run(run()) == ["b:1"] * 6
    assert _ejections(observer, "a:1") == 1
    assert sum("ejected" in r.getMessage() for r in caplog.records) == 1


def test_a_bad_request_is_not_retried_and_ejects_nothing():
    observer = Counting()

    async def run():
        pool, (a, b) = _pool("a:1", "b:1", observer=observer)
        a.fail = b.fail = BadRequest("input shape")
        with pytest.raises(BadRequest):
            await pool.call(_answer, 5)
        return len(a.calls) + len(b.calls)

    assert _run(run()) == 1
    assert (_up(observer, "a:1"), _up(observer, "b:1"), _ejections(observer, "a:1"), _ejections(observer, "b:1")) == \
        (1, 1, 0, 0)


def test_a_retry_gets_only_the_time_left_and_none_once_it_is_spent():
    async def slow_down(endpoint: Endpoint, seconds_left: float | None) -> str:
        endpoint.client.calls.append(seconds_left)
        await asyncio.sleep(0.05)
        raise Down("timed out connecting")

    async def run():
        pool, (a, b, c) = _pool("a:1", "b:1", "c:1")
        with pytest.raises(Down):
            await pool.call(slow_down, 0.08)
        await pool.close()
        return [f.calls for f in (a, b, c)]

    tried = [calls for calls in _run(run()) if calls]
    assert len(tried) == 2  # the third endpoint was left alone: no time remained
    (first,), (second,) = tried
    assert first == pytest.approx(0.08, abs=0.005) and second == pytest.approx(0.03, abs=0.02)


def test_without_a_deadline_every_endpoint_is_tried_once_then_the_last_error_raised():
    async def run():
        pool, fakes = _pool("a:1", "b:1", "c:1")
        for fake in fakes:
            fake.fail = Down(f"{fake.url} down")
        with pytest.raises(Down, match="down") as error:
            await pool.call(_answer, None)
        await pool.close()
        return error.value, [len(f.calls) for f in fakes], [f.calls[0] for f in fakes]

    error, counts, timeouts = _run(run())
    assert counts == [1, 1, 1] and timeouts == [None, None, None]


def test_one_endpoint_is_always_tried_and_an_answer_brings_it_back():
    observer = Counting()

    async def run():
        pool, (a,) = _pool("a:1", observer=observer)
        a.fail, a.ready = Down("Triton at a:1 cannot serve it: start it with `make serve`"), False
        for _ in range(2):
            with pytest.raises(Down, match="make serve"):
                await pool.call(_answer, 5)
        ejected = _up(observer, "a:1")
        a.fail = None  # Triton is back; the probe has not looked yet
        answer = await pool.call(_answer, 5)
        await pool.close()
        return ejected, answer, len(a.calls)

    assert _run(run()) == (0, "a:1", 3)
    assert (_up(observer, "a:1"), _ejections(observer, "a:1")) == (1, 1)


def test_an_ejected_endpoint_is_readmitted_once_its_probe_says_ready(caplog):
    observer = Counting()

    async def run():
        pool, (a, b) = _pool("a:1", "b:1", observer=observer)
        a.fail, a.ready = Down("gone"), False
        await pool.call(_answer, 5)
        await asyncio.sleep(PERIOD_S * 5)
        still_out = _up(observer, "a:1")
        a.fail, a.ready = None, True
        for _ in range(100):
            if _up(observer, "a:1"):
                break
            await asyncio.sleep(PERIOD_S)
        answers = {await pool.call(_answer, 5) for _ in range(4)}
        await pool.close()
        return still_out, answers

    with caplog.at_level(logging.INFO, logger="cxr.triton"):
        still_out, answers = _run(run())
    assert still_out == 0 and answers == {"a:1", "b:1"}
    assert _up(observer, "a:1") == 1
    assert [r.getMessage() for r in caplog.records if "again" in r.getMessage()] == [
        "Triton endpoint a:1 is ready again: back in rotation"]


def test_a_probe_that_raises_means_not_ready_and_the_watch_goes_on():
    async def run():
        calls = []

        async def probe(endpoint: Endpoint) -> bool:
            calls.append(endpoint.url)
            if len(calls) < 3:
                raise ConnectionError("refused")
            return True

        fake = Fake("a:1")
        fake.fail = Down("gone")
        pool = EndpointPool([Endpoint("a:1", fake)], probe, Down, period_s=PERIOD_S)
        with pytest.raises(Down):
            await pool.call(_answer, 5)
        for _ in range(200):
            if not pool.endpoints[0].ejected:
                break
            await asyncio.sleep(PERIOD_S)
        await pool.close()
        return len(calls), pool.endpoints[0].ejected

    assert _run(run()) == (3, False)


def test_a_cancelled_call_leaves_nothing_in_flight():
    async def run():
        pool, (a, _) = _pool("a:1", "b:1")
        a.gate = asyncio.Event()
        call = asyncio.create_task(pool.call(_answer, 5))
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return [e.in_flight for e in pool.endpoints]

    assert _run(run()) == [0, 0]


@pytest.mark.parametrize("urls, problem", [((), "no Triton endpoint"), (("a:1", "b:1", "a:1"), "'a:1'.*once")])
def test_no_endpoint_or_one_named_twice_is_a_settings_error(urls, problem):
    with pytest.raises(SettingsError, match=problem):
        EndpointPool([Endpoint(url, Fake(url)) for url in urls], None, Down)


def test_new_urls_join_in_rotation_kept_ones_keep_their_state_and_those_gone_leave():
    observer = Counting()

    async def run():
        pool, (a, b) = _pool("a:1", "b:1", observer=observer)
        a.fail = Down("gone")
        await pool.call(_answer, 5)  # a is ejected
        kept_a, kept_b = pool.endpoints
        left = pool.set_urls(["a:1", "c:1"], lambda url: Endpoint(url, Fake(url)))
        answers = [await pool.call(_answer, 5) for _ in range(4)]
        await pool.close()
        return kept_a, kept_b, left, pool.endpoints, answers

    kept_a, kept_b, left, endpoints, answers = _run(run())
    assert left == [kept_b] and endpoints[0] is kept_a and kept_a.ejected
    assert [e.url for e in endpoints] == ["a:1", "c:1"]
    assert set(answers) == {"c:1"}, "the new endpoint takes the calls; the ejected one is a last resort"
    assert observer.up == {"a:1": 0, "c:1": 1} and "b:1" not in observer.ejections


def test_an_endpoint_that_left_finishes_its_call_and_is_neither_ejected_nor_counted():
    observer = Counting()

    async def run():
        pool, (a,) = _pool("a:1", observer=observer)
        a.gate, a.fail = asyncio.Event(), Down("pod gone")
        pool.set_urls(["a:1", "b:1"], lambda url: Endpoint(url, Fake(url)))
        call = asyncio.create_task(pool.call(_answer, 5))
        await asyncio.sleep(0.05)  # the call waits on a
        (leaving,) = pool.set_urls(["b:1"], lambda url: Endpoint(url, Fake(url)))
        in_flight = leaving.in_flight
        a.gate.set()
        answer = await call  # a fails: the call is retried on b
        await pool.close()
        return in_flight, leaving, answer

    in_flight, leaving, answer = _run(run())
    assert (in_flight, leaving.in_flight, leaving.ejected) == (1, 0, False)
    assert answer == "b:1"
    assert observer.up == {"b:1": 1} and observer.ejections == {"b:1": 0}


def test_set_urls_refuses_no_url_and_a_url_twice():
    async def run():
        pool, _ = _pool("a:1")
        for urls in ([], ["b:1", "b:1"]):
            with pytest.raises(SettingsError):
                pool.set_urls(urls, lambda url: Endpoint(url, Fake(url)))
        return [e.url for e in pool.endpoints]

    assert _run(run()) == ["a:1"]
