"""Waiting for a Triton started elsewhere: looks with a growing pause, says what is missing where, returns
the first endpoint with every tower ready, and gives up at the timeout with what it last saw."""

import pytest

from cxr.processes import free_ports
from cxr.settings import Settings
from cxr.triton.errors import TritonUnavailableError
from cxr.triton.readiness import BACKOFF_S, missing, wait_ready

TOWERS = ["m_image", "m_text"]


class Clock:
    def __init__(self):
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _looks(answers: dict[str, list]):
    """A look that answers, per URL, the next of its answers (the last one again once they run out)."""
    def look(settings, url, towers):
        assert list(towers) == TOWERS
        queue = answers[url]
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return look


def test_it_waits_with_a_growing_pause_and_says_what_is_missing_until_one_endpoint_is_ready():
    clock, said = Clock(), []
    settings = Settings(triton_urls=("a:8001", "b:8001"))
    look = _looks({"a:8001": ["not answering (connection refused)"] * 3 + ["m_text not ready"],
                   "b:8001": ["not answering (connection refused)"] * 4 + [None]})
    url = wait_ready(settings, TOWERS, 600, said.append, look, clock.sleep, clock)
    assert url == "b:8001"
    assert clock.pauses == list(BACKOFF_S[:4])
    assert said[0] == ("waiting for Triton: a:8001 not answering (connection refused); "
                       "b:8001 not answering (connection refused); looking again in 1 s")
    assert "a:8001 m_text not ready" in said[3]


def test_the_pause_stays_at_its_longest():
    clock = Clock()
    look = _looks({"127.0.0.1:8001": ["not live"] * 9 + [None]})
    wait_ready(Settings(), TOWERS, 600, lambda line: None, look, clock.sleep, clock)
    assert clock.pauses == list(BACKOFF_S) + [BACKOFF_S[-1]] * 4


def test_at_the_timeout_it_gives_up_naming_what_it_saw_and_the_remedy():
    clock, said = Clock(), []
    look = _looks({"127.0.0.1:8001": ["m_image, m_text not ready (still loading, or not in its model repository)"]})
    with pytest.raises(TritonUnavailableError) as error:
        wait_ready(Settings(), TOWERS, 10, said.append, look, clock.sleep, clock)
    assert clock.now == 10 and clock.pauses == [1, 2, 4, 3]
    message = str(error.value)
    assert "not ready with m_image, m_text after 10 s" in message
    assert "127.0.0.1:8001 m_image, m_text not ready" in message and "CXR_TRITON_HOST" in message


def test_a_triton_that_is_not_there_is_not_answering():
    (port,) = free_ports(1)
    settings = Settings(triton_grpc_port=port)
    assert missing(settings, settings.triton_grpc_url, TOWERS).startswith("not answering (")
