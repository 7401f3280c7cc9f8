"""Fixtures of the gateway's unit tests."""

import pytest

from gateway import calls
from support.interceptor_server import Server


@pytest.fixture
def make_server():
    made = []

    def make(*interceptors):
        made.append(Server([calls.CallInterceptor(), *interceptors]))
        return made[-1]

    yield make
    for server in made:
        server.close()
