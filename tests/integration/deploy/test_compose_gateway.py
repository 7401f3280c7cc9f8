"""docker-compose.yml's gateway service, run without Docker: its environment, with each volume's container
path moved under a temporary folder, starts the real gateway (`python -m gateway.server`, the image's
entrypoint) in front of the session's real Triton; the service's own healthcheck command then sees
SERVING, and a client with the files `cxr certs dev` wrote and a token searches it."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxr import dev_pki
from cxr.client import RetrievalClient
from cxr.processes import free_ports, log_tail
from support import GATEWAY_MODEL

pytestmark = pytest.mark.triton
ROOT = Path(__file__).parents[3]
PROBE = ROOT / "deploy" / "grpc_health_probe.py"


def _defaults(text: str) -> str:
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(text))


def _service() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]


def _moved(value: str, places: dict[str, Path]) -> str:
    """`value` with a container path under one of `places` replaced by where it lies here."""
    for inside, here in places.items():
        if value == inside or value.startswith(inside + "/"):
            return str(here) + value[len(inside):]
    return value


def _healthcheck(places: dict[str, Path], port: int) -> list[str]:
    """The service's healthcheck command, run here: this Python, the probe from the checkout, our port."""
    command = [_defaults(arg) for arg in _service()["healthcheck"]["test"][1:]]
    assert command[:2] == ["python", "/opt/cxr/grpc_health_probe.py"]
    options = [re.sub(r"=(/.*)", lambda m: "=" + _moved(m.group(1), places), arg) for arg in command[2:]]
    return [sys.executable, str(PROBE), *options, f"--port={port}"]


def _wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited:\n{log_tail(log)}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the gateway did not listen within {timeout} s:\n{log_tail(log)}")


def test_the_compose_gateway_environment_serves_and_its_healthcheck_sees_serving(served, nih_index, tmp_path):
    certs = tmp_path / "certs"
    dev_pki.write_dev_pki(certs)
    places = {"/models": served.model_repository, "/var/lib/cxr/indexes": served.index_dir, "/etc/cxr/tls": certs,
              "/var/log/cxr": tmp_path / "audit", "/var/cache/cxr/index-copy": tmp_path / "index-copy",
              "/var/lib/cxr/reports": tmp_path / "reports"}
    for folder in ("audit", "index-copy", "reports"):
        (tmp_path / folder).mkdir()
    grpc_port, http_port, metrics_port = free_ports(3)
    env = {name: _moved(_defaults(value), places) for name, value in _service()["environment"].items()}
    env.update(CXR_MODEL=GATEWAY_MODEL, CXR_TRITON_HOST=served.triton_host,
               CXR_TRITON_GRPC_PORT=str(served.triton_grpc_port), CXR_GATEWAY_PORT=str(grpc_port),
               CXR_HTTP_PORT=str(http_port), CXR_METRICS_PORT=str(metrics_port))
    outside = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.server"], cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, env=dict(outside, **env, PYTHONPATH=str(ROOT)))
    try:
        _wait_listening(grpc_port, gateway, log)
        deadline, check = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            check = subprocess.run(_healthcheck(places, grpc_port), capture_output=True, text=True, timeout=30)
            if check.returncode == 0:
                break
            time.sleep(0.5)
        assert check.returncode == 0 and check.stdout.strip() == "SERVING", check.stdout + log_tail(log)
        token = dev_pki.issue_token(certs / dev_pki.SIGNING_KEY, "compose-test", ["search"], 300,
                                    env["CXR_JWT_ISSUER"], env["CXR_JWT_AUDIENCE"])
        with RetrievalClient(f"localhost:{grpc_port}", certs / dev_pki.CA_CERT, certs / dev_pki.CLIENT_CERT,
                             certs / dev_pki.CLIENT_KEY, token) as client:
            assert len(client.search_text("pleural effusion", top_k=3).hits) == 3
        assert (tmp_path / "audit" / "audit.jsonl").stat().st_size > 0, "the audit trail is on its volume"
    finally:
        gateway.terminate()
        gateway.wait(60)
