"""Fixtures the gateway's scenarios share."""

from dataclasses import replace

import pytest

from support import GATEWAY_MODEL, BackgroundGateway


@pytest.fixture(scope="module")
def web(served, nih_index):
    """A gateway of its own with its HTTP API, on the session's NIH index, its rate limit lifted."""
    background = BackgroundGateway(replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0), http=True)
    try:
        yield background
    finally:
        background.stop()
