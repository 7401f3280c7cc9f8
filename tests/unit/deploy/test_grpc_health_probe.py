"""deploy/grpc_health_probe.py, the gateway's Kubernetes probe, against the real gateway under mutual
TLS: alive while it answers, ready only when SERVING, and refused without a client certificate."""

import subprocess
import sys
from pathlib import Path

import pytest

from cxr import dev_pki
from cxr.processes import free_ports
from support import BackgroundGateway, make_settings

PROBE = Path(__file__).parents[3] / "deploy" / "grpc_health_probe.py"


@pytest.fixture(scope="module")
def not_serving(tmp_path_factory):
    """A gateway with mutual TLS and nothing to serve (no export, no Triton): NOT_SERVING."""
    root = tmp_path_factory.mktemp("probe")
    pki = root / "pki"
    dev_pki.write_dev_pki(pki)
    (root / "model_repository").mkdir()
    settings = make_settings(root, root / "cache", tls_cert=pki / dev_pki.SERVER_CERT,
                             tls_key=pki / dev_pki.SERVER_KEY, tls_client_ca=pki / dev_pki.CA_CERT)
    background = BackgroundGateway(settings)
    try:
        yield int(background.address.rsplit(":", 1)[1]), pki
    finally:
        background.stop()


def _probe(port: int, pki: Path, *extra: str, client_cert: bool = True) -> subprocess.CompletedProcess:
    files = [f"--cert={pki / dev_pki.CLIENT_CERT}", f"--key={pki / dev_pki.CLIENT_KEY}"] if client_cert else []
    command = [sys.executable, str(PROBE), f"--port={port}", f"--ca={pki / dev_pki.CA_CERT}", *files,
               "--server-name=localhost", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_gateway_that_answers_is_alive_but_not_ready_until_serving(not_serving):
    port, pki = not_serving
    alive = _probe(port, pki)
    assert alive.returncode == 0 and alive.stdout.strip() == "NOT_SERVING", alive.stderr
    ready = _probe(port, pki, "--ready")
    assert ready.returncode == 1 and ready.stdout.strip() == "NOT_SERVING", ready.stderr


def test_without_a_client_certificate_the_probe_fails(not_serving):
    port, pki = not_serving
    refused = _probe(port, pki, client_cert=False)
    assert refused.returncode == 1 and refused.stdout.startswith("no answer"), refused.stdout


def test_a_certificate_for_another_name_fails(not_serving):
    port, pki = not_serving
    wrong = _probe(port, pki, "--server-name=cxr-gateway.cxr.svc")
    assert wrong.returncode == 1 and wrong.stdout.startswith("no answer"), wrong.stdout


def test_nothing_listening_fails(not_serving):
    _, pki = not_serving
    (closed,) = free_ports(1)
    assert _probe(closed, pki, "--timeout=1").returncode == 1
