"""`make faults`: what clients see when things break under load, with `cxr serve` supervising.

Four clients query the secured gateway throughout. Triton is SIGKILLed three times, then the
gateway once: each time, the seconds until health is SERVING again and until a query succeeds,
and the status codes clients got meanwhile (only UNAVAILABLE or DEADLINE_EXCEEDED are right).
Then a truncated index build is swapped in (the previous index must keep serving) and a good
one is rebuilt under load (no query may fail). Results: benchmarks/results/<date>-<host>-faults.json
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2

from benchmarks.machine import describe, exit_status, save
from benchmarks.stack import exported
from cxr import archives, gateway_process
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from cxr.dev_pki import dev_security
from cxr.settings import Settings, load_settings, to_environment
from cxr.store import faiss_files
from indexing.build import BuildOptions, build_index

CLIENTS = 4
EXPECTED_DURING_OUTAGE = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


class Load:
    """CLIENTS threads querying until stopped (bounded: 100,000 calls each); codes kept with their time."""

    def __init__(self, settings: Settings):
        self.events: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(settings,)) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _run(self, settings: Settings) -> None:
        with RetrievalClient.from_settings(settings, retries=0, deadline_s=5) as client:
            for _ in range(100_000):
                if self._stop.is_set():
                    return
                try:
                    client.search_text("pleural effusion", top_k=5)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                    time.sleep(0.05)  # a client backs off a little
                self.events.append((time.monotonic(), code))

    def codes_between(self, start: float, end: float) -> dict:
        return dict(Counter(code for at, code in self.events if start <= at <= end))

    def first_ok_after(self, moment: float) -> float | None:
        return next((at for at, code in list(self.events) if at > moment and code == "OK"), None)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _health(settings: Settings) -> int | None:
    return gateway_process.health(settings, timeout=1.0)


def _wait(predicate, seconds: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"not within {seconds:.0f} s")
        time.sleep(0.05)
    return time.monotonic()


def _settle(load: Load, quiet_s: float = 2.0, seconds: float = 60.0) -> None:
    """Wait until every client has been answered OK for `quiet_s` (their channels have reconnected)."""
    def settled():
        now = time.monotonic()
        recent = [code for at, code in list(load.events) if at > now - quiet_s]
        return len(recent) > CLIENTS and set(recent) == {"OK"}
    _wait(settled, seconds)


def _kill(settings: Settings, name: str, load: Load) -> dict:
    """SIGKILL a supervised child; the seconds to SERVING and to the first good answer."""
    serving = health_pb2.HealthCheckResponse.SERVING
    pid = json.loads((settings.run_dir / f"{name}.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _wait(lambda: _health(settings) != serving, 15)
    back = _wait(lambda: _health(settings) == serving, 180)
    ok = _wait(lambda: load.first_ok_after(killed) is not None, 60)
    _settle(load)
    return {"killed": name, "seconds_to_serving": round(back - killed, 2),
            "seconds_to_first_ok": round(load.first_ok_after(killed) - killed, 2) if ok else None,
            "codes_meanwhile": load.codes_between(killed, time.monotonic())}


def _swap_corrupt(settings: Settings, model: str, load: Load) -> dict:
    index = settings.index_path(model)
    corrupt = index.with_name(index.name + ".corrupt")
    shutil.copytree(index, corrupt)
    target = corrupt / faiss_files.INDEX_FILE
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    retired = index.with_name(index.name + ".good")
    index.rename(retired)
    corrupt.rename(index)
    swapped = time.monotonic()
    time.sleep(3)
    serving = _health(settings) == health_pb2.HealthCheckResponse.SERVING
    refused = "still serving the previous one" in (settings.run_dir / gateway_process.LOG_FILE).read_text()
    shutil.rmtree(index)
    retired.rename(index)
    return {"fault": "truncated index.faiss swapped in", "serving_after": serving, "refusal_logged": refused,
            "codes_meanwhile": load.codes_between(swapped, time.monotonic())}


def _rebuild(settings: Settings, model: str, records, load: Load) -> dict:
    started = time.monotonic()
    build_index(records, ExportedModel.load(settings.model_repository, model), settings, settings.index_path(model),
                BuildOptions(progress=False))
    time.sleep(3)
    return {"fault": f"index rebuilt under load ({len(records)} images)",
            "seconds": round(time.monotonic() - started, 1), "codes_meanwhile": load.codes_between(started,
                                                                                                   time.monotonic())}


def _serve(settings: Settings) -> subprocess.Popen:
    env = dict(os.environ, **to_environment(settings))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.run_dir / "serve.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "cxr_cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run(model: str = "cxr-mini") -> dict:
    base = load_settings()
    records = archives.nih_labels(base.data_dir / "nih800" / "labels.csv", base.data_dir / "nih800")
    with exported(base, model) as plain:
        settings = dev_security(plain, plain.run_dir / "pki", "faults", ["search", "admin"],
                                audit_log=plain.run_dir / "audit.log")
        supervisor = _serve(settings)
        load = None
        try:
            _wait(lambda: (settings.run_dir / "serve.json").is_file() or supervisor.poll() is not None, 300)
            build_index(records[:200], ExportedModel.load(settings.model_repository, model), settings,
                        settings.index_path(model), BuildOptions(progress=False))
            _wait(lambda: _health(settings) == health_pb2.HealthCheckResponse.SERVING, 60)
            load = Load(settings)
            time.sleep(3)
            events = [_kill(settings, "triton", load) for _ in range(3)]
            events.append(_kill(settings, "gateway", load))
            events.append(_swap_corrupt(settings, model, load))
            events.append(_rebuild(settings, model, records, load))
        finally:
            if load is not None:
                load.stop()
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(120)
    return {"machine": describe(), "settings": {"model": model, "clients": CLIENTS,
                                                "security": "mutual TLS, JWT auth, audit log",
                                                "supervisor": "cxr serve (restart backoff 1 s, doubling)"},
            "figures": {"events": events}, "problems": _problems(events)}


def _problems(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        codes = set(event["codes_meanwhile"])
        allowed = EXPECTED_DURING_OUTAGE if "killed" in event else {"OK"}
        if not codes <= allowed:
            found.append(f"{event.get('killed') or event['fault']}: clients got {event['codes_meanwhile']}")
        if event.get("serving_after") is False or event.get("refusal_logged") is False:
            found.append(f"{event['fault']}: {event}")
    return found


def main(argv: list[str] | None = None) -> int:
    results = run()
    for event in results["figures"]["events"]:
        print(json.dumps(event))
    save("faults", results)
    return exit_status(results["problems"])


if __name__ == "__main__":
    sys.exit(main())
