"""`cxr serve` supervises: Triton SIGKILLed under load is started again and the same gateway serves
again by itself; while it is down, queries fail only with UNAVAILABLE or DEADLINE_EXCEEDED."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cxr import archives, gateway_process
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from cxr.registry import get_model
from cxr.settings import to_environment
from export.repository import export_model
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, make_settings

pytestmark = pytest.mark.triton
MODEL = "siglip-tiny"


def _cxr(args, settings):
    env = dict(os.environ, **to_environment(settings))
    return subprocess.run([sys.executable, "-m", "cxr_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _wait_health(settings, serving: bool, seconds: float):
    deadline = time.monotonic() + seconds
    while (gateway_process.health(settings) == health_pb2.HealthCheckResponse.SERVING) != serving:
        assert time.monotonic() < deadline, f"the gateway was not {'SERVING' if serving else 'NOT_SERVING'}"
        time.sleep(0.1)


def test_a_killed_triton_is_restarted_and_the_gateway_recovers_by_itself(tmp_path, cache_dir):
    settings = replace(make_settings(tmp_path, cache_dir), model=MODEL)
    export_model(get_model(MODEL), settings, log=lambda *_: None)
    served = _cxr(["serve", "--detach"], settings)
    assert served.returncode == 0, served.stdout + served.stderr
    try:
        records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")[:40]
        build_index(records, ExportedModel.load(settings.model_repository, MODEL), settings,
                    settings.index_path(MODEL), BuildOptions(progress=False, workers=1))
        _wait_health(settings, True, 30)
        gateway_pid = json.loads((settings.run_dir / "gateway.json").read_text())["pid"]
        triton_pid = json.loads((settings.run_dir / "triton.json").read_text())["pid"]

        codes, stop = [], threading.Event()

        def load():  # one client, bounded: at most 2000 calls
            with RetrievalClient(settings.gateway_address, deadline_s=5, retries=0) as client:
                for _ in range(2000):
                    if stop.is_set():
                        return
                    try:
                        client.search_text("pleural effusion", top_k=3)
                        codes.append("OK")
                    except grpc.RpcError as error:
                        codes.append(error.code().name)
                    time.sleep(0.02)

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(1)
        os.kill(triton_pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait_health(settings, False, 10)
        _wait_health(settings, True, 120)
        recovered = time.monotonic() - killed
        time.sleep(1)
        stop.set()
        worker.join(30)
        assert json.loads((settings.run_dir / "gateway.json").read_text())["pid"] == gateway_pid
        assert json.loads((settings.run_dir / "triton.json").read_text())["pid"] != triton_pid
        assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, set(codes)
        assert codes[-1] == "OK" and "UNAVAILABLE" in codes
        print(f"recovered in {recovered:.1f} s; {codes.count('OK')} OK, {len(codes) - codes.count('OK')} failed")
    finally:
        stopped = _cxr(["stop"], settings)
    assert "stopped gateway and triton" in stopped.stdout
    assert not (settings.run_dir / "serve.json").exists()
