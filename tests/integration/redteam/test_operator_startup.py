"""Red team, a careless operator starting the gateway: settings that would start a gateway refusing every
call or running without a protection, a second gateway on the same port, TLS files that are garbage or do
not match, a metrics port in use (issue 17: defects 9, 14, 15). Each is `python -m gateway.server` as
`cxr serve` starts it, expected to exit at once with the setting or file named and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cxr.dev_pki import write_dev_pki
from cxr.processes import free_ports
from cxr.settings import to_environment
from support import GATEWAY_MODEL, BackgroundGateway

pytestmark = pytest.mark.triton
ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def base(served, nih_index):
    (port,) = free_ports(1)
    return replace(served, model=GATEWAY_MODEL, gateway_port=port)


def _start(settings, **environment) -> subprocess.CompletedProcess:
    env = {**os.environ, **to_environment(settings), **{f"CXR_{k.upper()}": str(v) for k, v in environment.items()}}
    return subprocess.run([sys.executable, "-m", "gateway.server"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def _refused(result: subprocess.CompletedProcess, *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert all(word in output for word in words), output[-2000:]
    assert "Traceback" not in output, output[-2000:]


@pytest.mark.parametrize("name, value", [
    ("max_concurrent_rpcs", 0), ("rate_limit_burst", 0), ("default_deadline_s", -1), ("rate_limit_per_s", -5),
    ("gateway_port", 99999), ("max_concurrent_rpcs_per_client", 0), ("http_header_timeout_s", 0),
    ("max_concurrent_uploads", -1), ("max_decode_queue", 0),
])
def test_a_setting_out_of_range_stops_the_start_naming_it(base, name, value):
    _refused(_start(base, **{name: value}), f"{name} = ", "out of range", f"CXR_{name.upper()}")


def test_a_second_gateway_on_a_port_in_use_fails_instead_of_sharing_it(base):
    first = BackgroundGateway(base)
    try:
        port = int(first.address.rsplit(":", 1)[1])
        _refused(_start(base, gateway_port=port), f"127.0.0.1:{port}", "cannot be opened", "CXR_GATEWAY_PORT")
    finally:
        first.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory)
    (directory / "garbage.key").write_bytes(os.urandom(300))
    return directory


@pytest.mark.parametrize("cert, key, words", [
    ("server.pem", "garbage.key", ("tls_key", "garbage.key", "is not a PEM private key")),
    ("server.pem", "client.key", ("tls_key", "client.key", "is not the private key of tls_cert")),
    ("garbage.key", "server.key", ("tls_cert", "is not a PEM certificate")),
    ("server.pem", "missing.key", ("tls_key", "missing.key", "cannot be read")),
])
def test_bad_tls_files_are_named_not_reported_as_a_failed_bind(base, pki, cert, key, words):
    result = _start(base, tls_cert=pki / cert, tls_key=pki / key)
    _refused(result, *words)
    assert "Failed to bind" not in result.stdout + result.stderr


def test_a_metrics_port_in_use_is_named(base):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _refused(_start(base, metrics_port=port), f"metrics port 127.0.0.1:{port}", "CXR_METRICS_PORT")
