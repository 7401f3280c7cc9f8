"""Wait for a Triton this process did not start (NVIDIA's container, another host, a Kubernetes Service)
until one of its endpoints has the towers ready, looking again after a growing pause and saying, each
time, what is missing where (`cxr serve --triton external`).

Only the open health APIs are asked (server live and ready, model ready): no admin key is needed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from cxr.settings import Settings
from cxr.triton.errors import TritonUnavailableError
from cxr.triton.request import connection

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)  # then every 15 s: a Triton loading towers for minutes is not hurried
LOOK_TIMEOUT_S = 3.0

Look = Callable[[Settings, str, Sequence[str]], "str | None"]


def missing(settings: Settings, url: str, towers: Sequence[str]) -> str | None:
    """What keeps the Triton at `url` from serving `towers` (None: nothing, it serves them)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(**connection(settings, url))
    try:
        if not client.is_server_live(client_timeout=LOOK_TIMEOUT_S):
            return "not live"
        not_ready = [t for t in towers if not client.is_model_ready(t, client_timeout=LOOK_TIMEOUT_S)]
        return f"{', '.join(not_ready)} not ready (still loading, or not in its model repository)" if not_ready \
            else None
    except InferenceServerException as exc:
        return f"not answering ({_short(exc)})"
    finally:
        client.close()


def towers_ready(settings: Settings, towers: Sequence[str]) -> dict[str, bool] | None:
    """Whether the default endpoint has each of `towers` ready; None when no Triton answers there (`cxr models`)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(**connection(settings))
    try:
        if not client.is_server_live(client_timeout=LOOK_TIMEOUT_S):
            return None
        return {name: _model_ready(client, name) for name in towers}
    except InferenceServerException:
        return None
    finally:
        client.close()


def _model_ready(client, name: str) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return client.is_model_ready(name, client_timeout=LOOK_TIMEOUT_S)
    except InferenceServerException:
        return False


def wait_ready(settings: Settings, towers: Sequence[str], timeout: float, say: Callable[[str], None],
               look: Look = missing, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> str:
    """Block until an endpoint of settings.triton_endpoints has every one of `towers` ready; returns its URL.
    Raises TritonUnavailableError, with what was last seen, when none has after `timeout` seconds."""
    deadline = clock() + timeout
    for attempt in itertools.count():
        seen = {url: look(settings, url, towers) for url in settings.triton_endpoints}
        ready = [url for url, problem in seen.items() if problem is None]
        if ready:
            return ready[0]
        pause = min(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)], max(0.0, deadline - clock()))
        if pause <= 0:
            raise TritonUnavailableError(
                f"Triton was not ready with {', '.join(towers)} after {timeout:.0f} s: {_state(seen)}. Start it "
                "(docs/deployment.md, \"GPU hosts\"), or point triton_host / triton_urls (CXR_TRITON_HOST, CXR_TRITON_URLS) "
                "at it, and make sure its model repository holds the exported model")
        say(f"waiting for Triton: {_state(seen)}; looking again in {pause:.0f} s")
        sleep(pause)


def _state(seen: dict[str, str | None]) -> str:
    return "; ".join(f"{url} {problem}" for url, problem in seen.items())


def _short(exc) -> str:
    """tritonclient's message without the gRPC debug string that follows it."""
    text = str(exc.message() if hasattr(exc, "message") else exc)
    return text.split("\n")[0][:200]
