"""Milvus for index_backend = "milvus": the `milvus` profile of docker-compose.yml (standalone with
its etcd and MinIO, loopback only) and the values for Milvus's Helm chart (cluster, auth on)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[3]
COMPOSE = ROOT / "docker-compose.yml"
VALUES = ROOT / "deploy" / "milvus" / "values.yaml"
PROFILE = {"milvus", "milvus-etcd", "milvus-minio"}


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_the_milvus_profile_holds_milvus_etcd_and_minio_and_nothing_else():
    profiled = {name for name, service in _services().items() if "milvus" in service.get("profiles", [])}
    assert profiled == PROFILE
    assert "profiles" not in _services()["triton"], "`docker compose up` must still start Triton alone"


@pytest.mark.parametrize("name", sorted(PROFILE))
def test_milvus_services_are_pinned_checked_and_loopback_only(name):
    service = _services()[name]
    image, _, tag = service["image"].rpartition(":")
    assert image and tag and tag != "latest", service["image"]
    assert service["healthcheck"]["test"][0] == "CMD"
    defaults = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", port) for port in service.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in defaults), defaults


def test_milvus_listens_on_19530_and_waits_for_healthy_etcd_and_minio():
    milvus = _services()["milvus"]
    ports = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", port) for port in milvus["ports"]]
    assert "127.0.0.1:19530:19530" in ports
    assert milvus["depends_on"] == {"milvus-etcd": {"condition": "service_healthy"},
                                    "milvus-minio": {"condition": "service_healthy"}}
    assert milvus["environment"]["ETCD_ENDPOINTS"].split(":")[0] == "milvus-etcd"
    assert milvus["environment"]["MINIO_ADDRESS"].split(":")[0] == "milvus-minio"


def test_docker_compose_accepts_the_milvus_profile():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs it)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    result = subprocess.run([*command, "-f", str(COMPOSE), "--profile", "milvus", "config"], capture_output=True,
                            text=True, cwd=ROOT, env=dict(env, TRITON_ADMIN_KEY="s3"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert PROFILE | {"triton"} <= set(yaml.safe_load(result.stdout)["services"])


def test_the_helm_values_run_a_cluster_with_auth_replicas_and_persistence():
    values = yaml.safe_load(VALUES.read_text())
    assert values["cluster"]["enabled"] is True
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user["common"]["security"]["authorizationEnabled"] is True
    assert values["queryNode"]["replicas"] >= 2
    assert values["etcd"]["persistence"]["enabled"] and values["minio"]["persistence"]["enabled"]
    assert values["image"]["all"]["tag"] == _services()["milvus"]["image"].rpartition(":")[2], \
        "the cluster and the development store run one Milvus release"
    header = VALUES.read_text().split("\n\n")[0]
    assert "zilliztech/milvus" in header and "helm upgrade --install" in header
    assert "accessKey:" not in VALUES.read_text().split("\n\n", 1)[1], "object-store keys belong on the command line"
