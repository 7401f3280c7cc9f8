"""`cxr serve`: Triton and the gateway as children of one supervising process.

A child that dies is started again, after a backoff that doubles up to a minute and starts over
once the child has stayed up for a while; the gateway reconnects to a restarted Triton by itself.
SIGTERM (or Ctrl-C) stops the gateway first, which drains its calls in flight, then Triton.
With `--triton external` the gateway is the only child: the Triton it calls was started elsewhere
(NVIDIA's container, another host), and is waited for, not started, stopped or restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxr import gateway_process, processes, registry
from cxr.errors import CxrError
from cxr.settings import Settings
from cxr.triton import readiness, server_process

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
STABLE_S = 60.0  # up this long: the next crash starts the backoff over
POLL_S = 0.5
SUPERVISOR = "serve"  # its record in the run folder, which `cxr stop` reads


def _say(message: str) -> None:
    print(message, flush=True)  # detached, stdout is a log file: each line as it happens


def wait_recorded(run_dir: Path, name: str, process: subprocess.Popen, timeout: float) -> None:
    """Block until `process` has recorded itself as `name` (it is up), or has exited."""
    deadline = time.monotonic() + timeout
    record = run_dir / f"{name}.json"
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(record.read_text())["pid"] == process.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.25)
    if process.poll() is None:
        raise CxrError(f"`cxr serve` was not up after {timeout:.0f} s")


@dataclass
class Child:
    name: str
    start: Callable[[], tuple[subprocess.Popen, Path]]
    ready: Callable[[subprocess.Popen, Path], object]
    process: subprocess.Popen | None = None
    log_file: Path | None = None
    started: float = 0.0
    crashes: int = 0
    restarts: list[float] = field(default_factory=list)

    def launch(self) -> object:
        self.process, self.log_file = self.start()
        self.started = time.monotonic()
        return self.ready(self.process, self.log_file)

    def backoff(self) -> float:
        if time.monotonic() - self.started > STABLE_S:
            self.crashes = 0
        delay = BACKOFF_S[min(self.crashes, len(BACKOFF_S) - 1)]
        self.crashes += 1
        return delay


class Supervisor:
    def __init__(self, settings: Settings, timeout: float, log: Callable[[str], None] = _say,
                 external_triton: bool = False):
        """`external_triton`: run the gateway only, against the Triton of triton_host / triton_urls /
        triton_dns, after waiting up to `timeout` s for it to have the active model's towers ready."""
        self.settings = settings
        self.log = log
        self.timeout = timeout
        self.triton: Child | None = None
        if not external_triton:
            models = server_process.check_repository(settings.model_repository)
            self.triton = Child("triton", lambda: server_process.start(settings),
                                lambda p, f: server_process.wait_ready(settings, models, p, timeout, f))
        self.gateway = Child("gateway", lambda: gateway_process.start(settings),
                             lambda p, f: gateway_process.wait_answering(settings, p, f))
        self.children = [c for c in (self.triton, self.gateway) if c is not None]
        self._stopping = False

    def start(self) -> int:
        """Triton (or the wait for an external one), then the gateway; returns the gateway's health status.
        Raises if either fails."""
        try:
            if self.triton is None:
                self._wait_external()
            else:
                self.triton.launch()
                self.log(f"Triton ready: gRPC {self.settings.triton_grpc_url}, HTTP {self.settings.triton_http_url}, "
                         f"metrics {self.settings.triton_host}:{self.settings.triton_metrics_port}")
            status = self.gateway.launch()
        except BaseException:
            self.stop()
            raise
        self._record()
        return status

    def _wait_external(self) -> None:
        spec = registry.get_model(self.settings.model)
        towers = [spec.image_model, spec.text_model]
        url = readiness.wait_ready(self.settings, towers, self.timeout, self.log)
        self.log(f"Triton ready at {url} with {', '.join(towers)} (external: not started, stopped or restarted here)")

    def _record(self) -> None:
        for child in self.children:
            processes.record(self.settings.run_dir, child.name, child.process.pid, log=str(child.log_file),
                             restarts=len(child.restarts))
        processes.record(self.settings.run_dir, SUPERVISOR, os.getpid(),
                         triton="external" if self.triton is None else "local")

    def run(self) -> int:
        """Watch the children until SIGTERM or SIGINT; restart any that dies."""
        def _stop(signum, frame):
            self._stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while not self._stopping:
                for child in self.children:
                    if child.process.poll() is not None and not self._stopping:
                        self._restart(child)
                time.sleep(POLL_S)
        finally:
            self.stop()
        return 0

    def _restart(self, child: Child) -> None:
        delay = child.backoff()
        self.log(f"{child.name} exited with status {child.process.returncode}; starting it again in {delay:.0f} s "
                 f"(see {child.log_file})")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(0.1)
        if self._stopping:
            return
        try:
            child.launch()
        except CxrError as exc:
            self.log(f"{child.name} did not come back: {exc}")
            processes.stop_process(child.process)  # the next poll starts it again, after a longer wait
            return
        child.restarts.append(time.time())
        self._record()
        self.log(f"{child.name} is back (pid {child.process.pid})")

    def stop(self) -> None:
        """The gateway first (it drains its calls), then Triton."""
        self._stopping = True
        for child in reversed(self.children):
            if child.process is not None:
                processes.stop_process(child.process, timeout=self.settings.drain_grace_s + 10)
            (self.settings.run_dir / f"{child.name}.json").unlink(missing_ok=True)
        record = self.settings.run_dir / f"{SUPERVISOR}.json"
        if record.is_file() and json.loads(record.read_text()).get("pid") == os.getpid():
            record.unlink()
