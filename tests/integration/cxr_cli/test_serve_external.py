"""`cxr serve --triton external`: the gateway alone, in front of a real tritonserver it did not start (the
session's, as NVIDIA's container would be), reaches SERVING and answers; `cxr stop` stops the gateway and
leaves that Triton running."""

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from cxr import gateway_process
from cxr.client import RetrievalClient
from cxr.processes import free_ports
from cxr.registry import get_model
from cxr.settings import to_environment
from cxr.triton.readiness import missing
from support import GATEWAY_MODEL

pytestmark = pytest.mark.triton


def _cxr(args, settings):
    env = dict(os.environ, **to_environment(settings))
    return subprocess.run([sys.executable, "-m", "cxr_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_gateway_alone_reaches_serving_against_a_triton_it_did_not_start(served, nih_index, tmp_path):
    (gateway_port,) = free_ports(1)
    settings = replace(served, model=GATEWAY_MODEL, gateway_port=gateway_port, run_dir=tmp_path / "run")
    started = time.monotonic()
    done = _cxr(["serve", "--triton", "external", "--detach"], settings)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"gateway only, against the Triton at {served.triton_grpc_url}" in done.stdout
        assert f"Triton ready at {served.triton_grpc_url}" in done.stdout
        gateway_process.wait_serving(settings, timeout=60)
        serving_s = time.monotonic() - started
        with RetrievalClient(settings.gateway_address) as client:
            hits = client.search_text("small left pleural effusion", top_k=3).hits
        assert len(hits) == 3
        assert not (settings.run_dir / "triton.json").exists(), "no Triton is recorded as ours"
        print(f"`cxr serve --triton external --detach` to SERVING: {serving_s:.1f} s")
    finally:
        stopped = _cxr(["stop"], settings)
    assert "stopped the gateway (the external Triton keeps running)" in stopped.stdout
    assert gateway_process.health(settings) is None
    spec = get_model(GATEWAY_MODEL)
    assert missing(served, served.triton_grpc_url, [spec.image_model, spec.text_model]) is None, "Triton still serves"
