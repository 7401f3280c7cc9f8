"""docker-compose.yml is accepted by Docker Compose and serves the repository on a GPU."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cxr.triton.request import ADMIN_KEY, RESTRICTED_APIS

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TLS_OVERRIDE = ROOT / "deploy" / "triton-tls.compose.yml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, TLS_OVERRIDE]], ids=["base", "with Triton TLS"])
def test_docker_compose_config_accepts_the_files_and_demands_the_admin_secret(files):
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs it)")
    arguments = [*command, *[a for f in files for a in ("-f", str(f))], "config"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    result = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT, env=dict(env, TRITON_ADMIN_KEY="s3"))
    assert result.returncode == 0, result.stderr
    refused = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT, env=env)
    assert refused.returncode != 0 and "TRITON_ADMIN_KEY" in refused.stderr


def test_triton_service_mounts_the_repository_and_reserves_a_gpu():
    triton = yaml.safe_load(COMPOSE.read_text())["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["command"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    defaults = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", port) for port in triton["ports"]]
    assert all(port.startswith("127.0.0.1:") for port in defaults), defaults


@pytest.mark.parametrize("path", [COMPOSE, TLS_OVERRIDE], ids=lambda p: p.name)
def test_tritons_admin_apis_are_restricted_as_cxr_serve_restricts_them(path):
    command = yaml.safe_load(path.read_text())["services"]["triton"]["command"]
    expected = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY}="
    for flag in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        (value,) = [c[len(flag):] for c in command if c.startswith(flag)]
        assert value.startswith(expected) and "TRITON_ADMIN_KEY" in value
