"""docker-compose.yml is accepted by Docker Compose and serves the repository on a GPU."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs it)")
    result = subprocess.run([*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_triton_service_mounts_the_repository_and_reserves_a_gpu():
    triton = yaml.safe_load(COMPOSE.read_text())["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["command"]
    assert "./model_repository:/models" in triton["volumes"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert all(port.startswith("127.0.0.1:") for port in triton["ports"])
