"""A careless operator against the real gateway and Triton: a served index's files truncated in place
while clients search (`truncate -s 1000 index.faiss`, a `cp` over a column file), then the good files
copied back; and a gateway started over a manifest that is not JSON.

Each gateway runs as its own process (`python -m gateway.server`, as `cxr serve` starts it) over a
copy of the session's NIH index in tmp_path: a SIGBUS kills that child, and the test sees its exit
status instead of losing pytest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cxr import gateway_process
from cxr.client import RetrievalClient
from cxr.processes import free_ports, log_tail, stop_process
from cxr.settings import to_environment
from cxr.store import faiss_files
from support import GATEWAY_MODEL

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[3]
THREADS, SEARCHES = 4, 15  # per round: 60 searches, each reading 20 hits' rows
REFUSED = "refused the new index build"
SERVING = "serving index"


class ChildGateway:
    """`python -m gateway.server` from this checkout with the settings as CXR_* variables; its log in a file."""

    def __init__(self, settings):
        self.settings = settings
        self.log_file = settings.run_dir / gateway_process.LOG_FILE
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.child = subprocess.Popen([sys.executable, "-m", "gateway.server"], cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT, env=dict(os.environ, **to_environment(settings)))
        gateway_process.wait_answering(settings, self.child, self.log_file)
        self.address = gateway_process.local_address(settings)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while self.log().count(text) < count:
            assert self.child.poll() is None, f"the gateway died ({self.child.returncode}):\n{log_tail(self.log_file)}"
            assert time.monotonic() < deadline, f"no {text!r} x{count} in the log:\n{log_tail(self.log_file)}"
            time.sleep(0.2)

    def health(self) -> int | None:
        return gateway_process.health(self.settings)

    def stop(self) -> None:
        stop_process(self.child)


@pytest.fixture
def settings(served, nih_index, tmp_path):
    """The session's Triton, a copy of its NIH index (never damaged in place), free ports."""
    settings = replace(served, model=GATEWAY_MODEL, index_dir=tmp_path / "indexes", run_dir=tmp_path / "run",
                       gateway_port=free_ports(1)[0], metrics_port=0, http_port=0, rate_limit_per_s=0)
    shutil.copytree(nih_index, settings.index_path(GATEWAY_MODEL))
    return settings


def _round(address: str, during=None) -> list[str]:
    """THREADS clients, SEARCHES searches each; `during()` runs once the first answers are in."""
    codes: list[str] = []
    started = threading.Event()

    def search():
        with RetrievalClient(address, retries=0, deadline_s=30) as client:
            for _ in range(SEARCHES):
                try:
                    client.search_text("pleural effusion", top_k=20)
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
                started.set()

    threads = [threading.Thread(target=search) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    if during is not None:
        started.wait(60)
        during()
    for thread in threads:
        thread.join(120)
    return codes


@pytest.mark.parametrize("name", [faiss_files.INDEX_FILE, "table/image_id.bytes"])
def test_a_served_file_truncated_in_place_is_refused_and_its_restoration_served(settings, name, tmp_path):
    index = settings.index_path(GATEWAY_MODEL)
    target, good = index / name, tmp_path / "good"
    shutil.copyfile(target, good)
    manifest = (index / faiss_files.MANIFEST_FILE).stat()
    gateway = ChildGateway(settings)
    try:
        gateway.wait_log(SERVING)
        codes = _round(gateway.address, during=lambda: os.truncate(target, 1000))  # `truncate -s 1000`
        gateway.wait_log(REFUSED)
        codes += _round(gateway.address)
        assert gateway.child.poll() is None, f"the gateway died ({gateway.child.returncode})"
        assert codes == ["OK"] * 2 * THREADS * SEARCHES, sorted(set(codes))
        refusal = next(line for line in gateway.log().splitlines() if REFUSED in line)
        assert target.name in refusal and "still serving the previous one" in refusal

        shutil.copyfile(good, target)  # the good file back, in place, the manifest left alone
        gateway.wait_log(SERVING, count=2)
        assert _round(gateway.address) == ["OK"] * THREADS * SEARCHES
        after = (index / faiss_files.MANIFEST_FILE).stat()
        assert (after.st_mtime_ns, after.st_ino) == (manifest.st_mtime_ns, manifest.st_ino)
        assert gateway.health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        gateway.stop()
    assert gateway.child.returncode not in (-signal.SIGBUS, -signal.SIGSEGV)


def test_a_manifest_that_is_not_json_is_reported_corrupt_not_missing(settings):
    (settings.index_path(GATEWAY_MODEL) / faiss_files.MANIFEST_FILE).write_text("{not json")
    gateway = ChildGateway(settings)
    try:
        gateway.wait_log("NOT_SERVING")
        summary = next(line for line in gateway.log().splitlines() if "NOT_SERVING" in line)
        assert "index corrupt (" in summary and "manifest.json is not readable JSON" in summary, summary
        assert "missing" not in summary
        assert gateway.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        with RetrievalClient(gateway.address, retries=0) as client, pytest.raises(grpc.RpcError) as error:
            client.search_text("effusion")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "manifest.json is not readable JSON" in error.value.details()
    finally:
        gateway.stop()
