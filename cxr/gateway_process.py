"""Run the gateway as a child process of `cxr serve`, and wait until it answers health checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from grpc_health.v1 import health_pb2

from cxr import client
from cxr.errors import CxrError, FailedPreconditionError
from cxr.processes import log_tail, port_free
from cxr.settings import Settings, to_environment

NAME = "gateway"
LOG_FILE = "gateway.log"
WILDCARDS = ("0.0.0.0", "::", "[::]", "")


class GatewayError(CxrError):
    """The gateway could not be started."""


class GatewayPortInUseError(GatewayError, FailedPreconditionError):
    """Something else listens on the gateway's port."""


def check_port(settings: Settings) -> None:
    if not port_free(settings.gateway_host, settings.gateway_port):
        raise GatewayPortInUseError(f"the gateway port {settings.gateway_address} is already in use: stop what holds "
                                    "it (`cxr stop` if it is ours) or choose another with CXR_GATEWAY_PORT.")


def start(settings: Settings) -> tuple[subprocess.Popen, Path]:
    check_port(settings)
    log_file = settings.run_dir / LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.server"], stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, **to_environment(settings)), start_new_session=True)
    return process, log_file


def local_address(settings: Settings) -> str:
    """Where this machine reaches the gateway: a wildcard bind is asked through localhost."""
    host = "localhost" if settings.gateway_host in WILDCARDS else settings.gateway_host
    return f"{host}:{settings.gateway_port}"


def health(settings: Settings, timeout: float = 2.0) -> int | None:
    """The gateway's health status (health_pb2 enum), or None when it does not answer. With TLS on,
    the client settings (ca, and client_cert/client_key for mutual TLS) are used."""
    ca = settings.ca if settings.tls else None
    return client.health(local_address(settings), ca, settings.client_cert, settings.client_key, timeout)


def _hint(settings: Settings) -> str:
    if settings.tls and not settings.ca:
        return " (the gateway uses TLS: set ca, CXR_CA, to the CA that signed tls_cert, so it can be checked)"
    if settings.tls_client_ca and not settings.client_cert:
        return " (the gateway wants client certificates: set client_cert and client_key, CXR_CLIENT_CERT/KEY)"
    return ""


def wait_answering(settings: Settings, process: subprocess.Popen, log_file: Path, timeout: float = 120.0) -> int:
    """Block until the gateway answers a health check; returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise GatewayError(f"the gateway exited with status {process.returncode}; see {log_file}:\n"
                               f"{log_tail(log_file)}")
        status = health(settings)
        if status is not None:
            return status
        time.sleep(0.25)
    raise GatewayError(f"the gateway did not answer within {timeout:.0f} s{_hint(settings)}; see {log_file}:\n"
                       f"{log_tail(log_file)}")


def wait_serving(settings: Settings, timeout: float = 60.0) -> None:
    """Block until the gateway reports SERVING (its model ready in Triton, its index loaded)."""
    deadline = time.monotonic() + timeout
    while health(settings) != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline:
            raise GatewayError(f"the gateway was not SERVING after {timeout:.0f} s; see {settings.run_dir}")
        time.sleep(0.25)
