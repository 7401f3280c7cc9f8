import threading
import time

from benchmarks.load import run_load


def test_load_is_bounded_in_count_and_uses_every_thread():
    seen, lock = set(), threading.Lock()

    def make_sender():
        def send():
            with lock:
                seen.add(threading.get_ident())
            time.sleep(0.01)
        return send

    out = run_load(make_sender, concurrency=4, max_requests=40, max_seconds=30, warmup=0)
    assert out["requests"] == 40 and out["errors"] == 0 and len(seen) == 4
    assert 10 <= out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    # four threads of 10 ms calls: well above one thread's 100 qps
    assert out["qps"] > 150


def test_load_is_bounded_in_time_and_counts_failures():
    calls = iter(range(10**6))

    def make_sender():
        def send():
            if next(calls) % 2:
                raise RuntimeError("Triton is down")
            time.sleep(0.02)
        return send

    started = time.monotonic()
    out = run_load(make_sender, concurrency=2, max_requests=10**6, max_seconds=0.5, warmup=0)
    assert time.monotonic() - started < 2.0
    assert out["errors"] > 0 and "Triton is down" in out["first_error"]
    assert out["requests"] > 0
