"""A closed-loop load generator: N threads, each sending its next request when the last returns.

Bounded in count and in time (whichever comes first), so a slow model cannot run away with the
machine. Latency is measured per request; throughput is completed requests over wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def run_load(make_sender: Callable[[], Callable[[], object]], concurrency: int, max_requests: int,
             max_seconds: float, warmup: int = 2) -> dict:
    """Latency percentiles (ms) and queries/s of `concurrency` threads sharing `max_requests`.

    `make_sender` is called once per thread (a client per thread, as real callers have); each
    sender sends one request. Failed requests are counted, not timed.
    """
    lock = threading.Lock()
    state = {"sent": 0, "errors": 0, "first_error": ""}
    latencies: list[float] = []
    senders = [make_sender() for _ in range(concurrency)]
    for send in senders[:1] * warmup:
        send()
    deadline = time.monotonic() + max_seconds

    def worker(send):
        while time.monotonic() < deadline:
            with lock:
                if state["sent"] >= max_requests:
                    return
                state["sent"] += 1
            started = time.perf_counter()
            try:
                send()
            except Exception as exc:  # noqa: BLE001 - a load test reports failures, it does not stop on them
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or f"{type(exc).__name__}: {exc}"[:300]
                continue
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, send) for send in senders]:
            future.result()
    seconds = time.perf_counter() - started
    return summarize_latencies(latencies, seconds, concurrency, state["errors"], state["first_error"])


def summarize_latencies(latencies: list[float], seconds: float, concurrency: int, errors: int = 0,
                        first_error: str = "") -> dict:
    out = {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
           "seconds": round(seconds, 2), "qps": round(len(latencies) / seconds, 2) if seconds else 0.0}
    if latencies:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        out.update(p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2), p99_ms=round(float(p99), 2))
    if first_error:
        out["first_error"] = first_error
    return out
