"""`cxr serve --triton external` with no Triton there: it waits, saying so, then gives up with the remedy, and
starts no gateway and no Triton of its own (the real Triton case: tests/integration/cxr_cli/test_serve_external.py).
Run in a child process from the checkout, as the other tests of the command line run `cxr`."""

import os
import subprocess
import sys
from pathlib import Path

from cxr.processes import port_free
from cxr.registry import get_model
from cxr.settings import to_environment
from support import make_settings

ROOT = Path(__file__).resolve().parents[3]
MODEL = "medsiglip-tiny"


def test_without_a_triton_it_waits_says_so_and_gives_up_starting_nothing(tmp_path):
    settings = make_settings(tmp_path, tmp_path / "cache", model=MODEL)
    env = dict(os.environ, **to_environment(settings))
    done = subprocess.run([sys.executable, "-m", "cxr_cli", "serve", "--triton", "external", "--timeout", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    spec = get_model(MODEL)
    assert done.returncode != 0
    assert "gateway only, against the Triton at " + settings.triton_grpc_url in done.stdout
    assert f"waiting for Triton: {settings.triton_grpc_url} not answering (" in done.stdout
    assert f"not ready with {spec.image_model}, {spec.text_model} after 2 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert port_free(settings.gateway_host, settings.gateway_port)
    assert not settings.run_dir.exists() or not list(settings.run_dir.glob("*.json"))
    assert port_free(settings.triton_host, settings.triton_http_port), "no Triton of its own was started"
