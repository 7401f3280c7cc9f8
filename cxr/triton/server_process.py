"""Start, wait for and stop a local `tritonserver` (the binary inside PyPI's nvidia-pytriton).

That build carries the python backend but not its stub in place: the stub for this Python is
copied beside the backend into a folder of our own, which Triton is pointed at.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cxr.processes import log_tail, port_free
from cxr.settings import Settings
from cxr.triton.errors import TritonStartError
from cxr.triton.request import ADMIN_KEY, RESTRICTED_APIS, connection

NAME = "triton"
LOG_FILE = "triton.log"
INSTALL_HINT = "run `make setup` (it installs nvidia-pytriton==0.7.0, which ships tritonserver)"


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise TritonStartError(f"tritonserver not found: the nvidia-pytriton package is missing; "
                               f"{INSTALL_HINT}") from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def binary() -> Path:
    path = pytriton_dir() / "bin" / "tritonserver"
    if not path.is_file():
        raise TritonStartError(f"tritonserver binary not found at {path}; {INSTALL_HINT}")
    return path


def backend_dir(cache_dir: Path) -> Path:
    """A backends folder whose python backend has the stub for the running Python."""
    source = pytriton_dir()
    target = cache_dir / "triton" / "backends"
    python_backend = target / "python"
    stub = source / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"no python backend stub for Python {sys.version_info.major}."
                               f"{sys.version_info.minor} in {stub.parent.parent}; use Python 3.8-3.13")
    if not (python_backend / stub.name).is_file():
        python_backend.mkdir(parents=True, exist_ok=True)
        for item in (source / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python_backend / item.name)
        shutil.copy2(stub, python_backend / stub.name)
    return target


def check_ports(settings: Settings) -> None:
    ports = {"HTTP": settings.triton_http_port, "gRPC": settings.triton_grpc_port,
             "metrics": settings.triton_metrics_port}
    for kind, port in ports.items():
        if not port_free(settings.triton_host, port):
            env = f"CXR_TRITON_{'GRPC' if kind == 'gRPC' else kind.upper()}_PORT"
            raise TritonStartError(f"Triton's {kind} port {settings.triton_host}:{port} is already in use: stop "
                                   f"what holds it (`cxr stop` if it is our Triton) or choose another port with "
                                   f"{env}.")


def check_repository(repository: Path) -> list[str]:
    """Model folders Triton will load; an empty or missing repository is an error."""
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt")) if repository.is_dir() else []
    if not models:
        raise TritonStartError(f"model repository {repository} has no models: run `make export MODEL=<name>` "
                               "(`cxr models` lists them) before serving.")
    return models


def _prepend(env: dict, key: str, paths: list[str]) -> None:
    existing = [p for p in env.get(key, "").split(os.pathsep) if p]
    env[key] = os.pathsep.join(dict.fromkeys(paths + existing))


def _environment() -> dict:
    """Triton's python models import onnxruntime and numpy from this interpreter's environment:
    the stub's embedded Python finds its prefix from the first python3 on PATH (as pytriton does).
    The copied stub finds the libraries it was linked with in the wheel's nvidia_pytriton.libs."""
    env = dict(os.environ)
    _prepend(env, "PATH", [str(Path(sys.executable).parent)])
    _prepend(env, "LD_LIBRARY_PATH", [str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")])
    return env


@dataclass(frozen=True)
class TritonTls:
    """Triton's own certificate (and the CA of the clients it accepts, for mutual TLS)."""
    cert: Path
    key: Path
    client_ca: Path | None = None


def admin_key(path: Path) -> str:
    """The secret for Triton's restricted APIs, made (owner-only) on first use."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def security_flags(settings: Settings, tls: TritonTls | None = None) -> list[str]:
    """Triton's admin APIs locked behind the shared secret, and TLS on its gRPC port when asked."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY}={admin_key(settings.triton_admin_key_file)}"
    flags = [f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}"]
    if tls is not None:
        flags += ["--grpc-use-ssl=true", f"--grpc-server-cert={tls.cert}", f"--grpc-server-key={tls.key}"]
        if tls.client_ca:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={tls.client_ca}"]
    return flags


def start(settings: Settings, log_file: Path | None = None, tls: TritonTls | None = None
          ) -> tuple[subprocess.Popen, Path]:
    """Launch tritonserver on the settings' repository and ports; returns at once. Local Triton
    listens on loopback, where TLS adds little; `tls` is for checking a TLS deployment here."""
    exe = binary()
    models = check_repository(settings.model_repository)
    check_ports(settings)
    log_file = log_file or settings.run_dir / LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    host = settings.triton_host
    command = [
        str(exe), f"--model-repository={settings.model_repository.resolve()}",
        f"--backend-directory={backend_dir(settings.cache_dir).resolve()}",
        f"--http-address={host}", f"--http-port={settings.triton_http_port}",
        f"--grpc-address={host}", f"--grpc-port={settings.triton_grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={settings.triton_metrics_port}",
        "--exit-timeout-secs=10", "--log-verbose=0", *security_flags(settings, tls),
    ]
    with log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} serving {', '.join(models)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(),
                                   start_new_session=True)
    return process, log_file


def wait_ready(settings: Settings, models: list[str], process: subprocess.Popen | None = None,
               timeout: float = 300.0, log_file: Path | None = None) -> None:
    """Block until the server and `models` are ready (KServe v2 ServerReady, ModelReady)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(**connection(settings))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TritonStartError(f"tritonserver exited with status {process.returncode} while starting; "
                                   f"see {log_file or 'its log'}:\n{log_tail(log_file)}")
        try:
            if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                return
        except InferenceServerException:
            pass
        time.sleep(0.25)
    raise TritonStartError(f"Triton was not ready with {models} after {timeout:.0f} s; see {log_file}:\n"
                           f"{log_tail(log_file)}")
