"""Sequential request timing shared by the benchmarks: bounded in count and in time."""

from __future__ import annotations

import time

import numpy as np


def time_requests(call, count: int, seconds: float, warmup: int = 0) -> dict:
    """p50/p95 in milliseconds of up to `count` sequential calls within `seconds`."""
    for _ in range(warmup):
        call()
    times, deadline = [], time.monotonic() + seconds
    while len(times) < count and time.monotonic() < deadline:
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "requests": len(times)}
