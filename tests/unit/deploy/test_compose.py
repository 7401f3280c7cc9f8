"""docker-compose.yml as a stack: Docker Compose accepts it with every profile; the gateway service is built
from deploy/gateway.Dockerfile, starts with the settings its environment gives (TLS, tokens, every path on a
mounted volume), is healthy only when SERVING and waits for a healthy Triton; Triton's TensorRT engines go
to a volume of their own; `monitoring` scrapes the gateway and Triton with the shipped alert rules and
provisions the shipped dashboard; `pacs` is Orthanc with DICOMweb on loopback."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cxr import dev_pki
from cxr.settings import FIELDS, Settings, SettingsError, load_settings
from export.triton_config import TRT_CACHE_DIR
from gateway import tls, writes

ROOT = Path(__file__).parents[3]
COMPOSE = ROOT / "docker-compose.yml"
TLS_OVERRIDE = ROOT / "deploy" / "triton-tls.compose.yml"
DOCKERFILE = ROOT / "deploy" / "gateway.Dockerfile"
MONITORING = ROOT / "deploy" / "monitoring"
PROFILES = {"monitoring": {"prometheus", "grafana"}, "pacs": {"orthanc"},
            "milvus": {"milvus", "milvus-etcd", "milvus-minio"}}
ALWAYS = {"triton", "gateway"}
DEFAULTS = Settings()


def _defaults(text: str) -> str:
    """A value with every ${NAME:-default} replaced by its default, as Compose reads it with NAME unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _gateway() -> dict:
    return _services()["gateway"]


def _environment(service: dict) -> dict[str, str]:
    return {name: _defaults(str(value)) for name, value in service["environment"].items()}


def _mounts(service: dict) -> dict[PurePosixPath, tuple[str, bool]]:
    """Container path -> (source, read-only), defaults filled in."""
    mounts = {}
    for volume in service["volumes"]:
        parts = _defaults(volume).split(":")
        mounts[PurePosixPath(parts[1])] = (parts[0], parts[2:] == ["ro"])
    return mounts


def _mounted(mounts: dict, path: Path) -> tuple[str, bool] | None:
    """The mount a container path lies under (the deepest one)."""
    under = [m for m in mounts if PurePosixPath(path).is_relative_to(m)]
    return mounts[max(under, key=lambda m: len(m.parts))] if under else None


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("profiles", [[], ["monitoring"], ["pacs"], ["milvus"], sorted(PROFILES)],
                         ids=["default", "monitoring", "pacs", "milvus", "all"])
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, TLS_OVERRIDE]], ids=["base", "with Triton TLS"])
def test_docker_compose_config_accepts_every_profile(profiles, files):
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs it)")
    arguments = [*command, *[a for f in files for a in ("-f", str(f))],
                 *[a for p in profiles for a in ("--profile", p)], "config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "TRITON_", "COMPOSE_"))}
    done = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT, env=dict(env, TRITON_ADMIN_KEY="s3"),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    services = set(yaml.safe_load(done.stdout)["services"])
    assert ALWAYS | {s for p in profiles for s in PROFILES[p]} <= services


def test_each_profile_holds_its_services_and_the_default_stack_is_triton_and_the_gateway():
    profiled = {}
    for name, service in _services().items():
        for profile in service.get("profiles", []):
            profiled.setdefault(profile, set()).add(name)
    assert profiled == PROFILES
    assert {name for name, service in _services().items() if not service.get("profiles")} == ALWAYS


@pytest.mark.parametrize("name", sorted(set().union(*PROFILES.values())) + ["gateway"])
def test_every_service_is_pinned_and_published_on_loopback_only(name):
    service = _services()[name]
    image, _, tag = service["image"].rpartition(":")
    assert image and tag and tag != "latest", service["image"]
    ports = [_defaults(port) for port in service.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in ports), ports


def test_the_gateway_is_built_from_the_gateway_dockerfile():
    build = _gateway()["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert _gateway()["image"].split(":")[0] == "cxr-gateway"


def test_the_gateway_environment_is_settings_it_would_start_with_and_every_path_is_mounted(tmp_path):
    gateway = _gateway()
    env = _environment(gateway)
    unknown = [name for name in env if name.removeprefix("CXR_").lower() not in FIELDS]
    assert not unknown, f"not fields of cxr.settings.Settings: {unknown}"
    settings = load_settings(tmp_path, environ=env)
    tls.check_exposure(settings, settings.gateway_address)  # it listens beyond loopback: TLS and tokens
    assert settings.tls_client_ca and settings.auth == "token"
    mounts = _mounts(gateway)
    for path in (settings.model_repository, settings.index_dir, settings.tls_cert, settings.tls_key,
                 settings.tls_client_ca, Path(settings.jwt_jwks)):
        mount = _mounted(mounts, path)
        assert mount and mount[1], f"{path}: an input, on a read-only mount"
    for path in (settings.audit_log.parent, settings.index_copy_dir):
        mount = _mounted(mounts, path)
        assert mount and not mount[1] and "/" not in mount[0], f"{path}: written, on a named volume"
        assert mount[0] in yaml.safe_load(COMPOSE.read_text())["volumes"]
    assert settings.triton_grpc_url == f"triton:{DEFAULTS.triton_grpc_port}"
    triton_models = _mounts(_services()["triton"])[PurePosixPath("/models")][0]
    assert _mounted(mounts, settings.model_repository)[0] == triton_models, "the repository Triton serves"


def _with(service: dict, **variables: str) -> dict[str, str]:
    """The service's environment as Compose makes it with `variables` set in its own environment."""
    pattern = re.compile(r"\$\{(\w+):-([^}]*)\}")
    return {name: pattern.sub(lambda m: variables.get(m.group(1), m.group(2)), str(value))
            for name, value in service["environment"].items()}


def test_single_sign_on_passes_through_with_the_settings_defaults_and_needs_the_session_key(tmp_path):
    gateway = _gateway()
    oidc = {name for name in FIELDS if name.startswith("oidc_")}
    passed = {name.removeprefix("CXR_").lower(): str(value) for name, value in gateway["environment"].items()
              if name.startswith("CXR_OIDC_")}
    assert set(passed) == oidc, "every oidc_* setting can be given"
    assert all(value == f"${{CXR_{name.upper()}:-{_defaults(value)}}}" for name, value in passed.items()), \
        "each from the variable of its own name"
    unset = load_settings(tmp_path, environ=_environment(gateway))
    assert all(getattr(unset, name) == getattr(DEFAULTS, name) for name in oidc), "unset: the settings' defaults"
    sign_in = {"CXR_OIDC_ISSUER": "https://idp.hospital.example/realms/radiology", "CXR_OIDC_CLIENT_ID": "cxr",
               "CXR_OIDC_ROLE_SCOPES": "radiologist=search,studies"}
    with pytest.raises(SettingsError, match="oidc_session_key"):
        load_settings(tmp_path, environ=_with(gateway, **sign_in))
    settings = load_settings(tmp_path, environ=_with(gateway, **sign_in, CXR_OIDC_SESSION_KEY="k" * 44))
    assert settings.oidc_issuer == sign_in["CXR_OIDC_ISSUER"] and settings.oidc_session_key == "k" * 44
    assert "CXR_OIDC_SESSION_KEY (`openssl rand -base64 32`)" in COMPOSE.read_text(), "the file says how to make it"


def test_every_folder_the_gateway_writes_is_on_a_writable_mount_and_the_ledgers_are_the_intakes(tmp_path):
    """writes.written_folders is what the gateway writes (it checks each at start); a read-only mount there
    loses it: the report ledger, under the read-only indexes, could not even be opened."""
    settings = load_settings(tmp_path, environ=_environment(_gateway()))
    mounts = _mounts(_gateway())
    folders = writes.written_folders(settings)
    assert set(folders) == {"audit_log", "index_copy_dir", "reports_dir"}
    for name, folder in folders.items():
        mount = _mounted(mounts, folder)
        assert mount and not mount[1], f"{name}: {folder} is written, on a read-only mount or none"
    host = Settings(index_dir=Path("indexes")).reports_path(settings.model).parent  # `cxr reports listen` here
    assert PurePosixPath(_mounted(mounts, folders["reports_dir"])[0]) == PurePosixPath(".") / host
    assert f"mkdir -p {host}" in COMPOSE.read_text(), "the file says to create it (Docker would, as root)"


def test_the_gateway_reads_the_files_cxr_certs_dev_writes():
    env = _environment(_gateway())
    names = {PurePosixPath(env[f"CXR_{key}"]).name for key in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "JWT_JWKS")}
    assert names == {dev_pki.SERVER_CERT, dev_pki.SERVER_KEY, dev_pki.CA_CERT, dev_pki.JWKS_FILE}
    probe = _gateway()["healthcheck"]["test"]
    options = dict(arg.removeprefix("--").partition("=")[::2] for arg in probe if arg.startswith("--"))
    assert {PurePosixPath(options[k]).name for k in ("ca", "cert", "key")} == {
        dev_pki.CA_CERT, dev_pki.CLIENT_CERT, dev_pki.CLIENT_KEY}
    assert _defaults(options["server-name"]) in dev_pki.SERVER_NAMES


def test_the_gateway_is_healthy_when_serving_and_starts_after_a_healthy_triton():
    gateway = _gateway()
    probe = gateway["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", _copied_probe_path()] and "--ready" in probe
    options = dict(arg.removeprefix("--").partition("=")[::2] for arg in probe if arg.startswith("--"))
    assert _mounted(_mounts(gateway), Path(options["ca"])), "the probe's TLS files are mounted"
    assert gateway["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert "/v2/health/ready" in " ".join(_services()["triton"]["healthcheck"]["test"])
    grace = float(_environment(gateway)["CXR_DRAIN_GRACE_S"])
    assert int(gateway["stop_grace_period"].rstrip("s")) > grace, "Compose must let the gateway drain"


def test_the_gateway_runs_unprivileged_and_its_volumes_are_writable_by_its_group():
    gateway = _gateway()
    user, _, group = _defaults(gateway["user"]).partition(":")
    text = DOCKERFILE.read_text()
    assert f"USER {user}:{group}" in text and group == "10001"
    (made,) = re.findall(r"install -d -o 10001 -g 10001 -m (\d+) ([^\n\\]+)", text)
    mode, folders = made
    assert int(mode, 8) & 0o070 == 0o070, "group-writable, for a CXR_UID that is not 10001"
    written = {str(p) for p, (source, ro) in _mounts(gateway).items() if not ro}
    assert written == set(folders.split())
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]


def test_tensorrt_engines_go_to_a_volume_of_their_own_and_the_models_are_read_only():
    triton = _mounts(_services()["triton"])
    assert triton[PurePosixPath("/models")][1] is True
    source, read_only = triton[PurePosixPath(TRT_CACHE_DIR)]
    assert not read_only and source in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_monitoring_scrapes_the_gateway_and_triton_with_the_shipped_rules():
    prometheus = _services()["prometheus"]
    mounts = _mounts(prometheus)
    config_file = next(source for path, (source, _) in mounts.items() if path.name == "prometheus.yml")
    config = yaml.safe_load((ROOT / config_file).read_text())
    host_config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    metrics_port = _environment(_gateway())["CXR_METRICS_PORT"]
    assert targets == {"cxr-gateway": [f"gateway:{metrics_port}"], "triton": [f"triton:{DEFAULTS.triton_metrics_port}"]}
    assert {job["job_name"] for job in host_config["scrape_configs"]} == set(targets), "the same jobs as on a host"
    config_dir = next(path for path, (source, _) in mounts.items() if path.name == "prometheus.yml").parent
    for rule_file in config["rule_files"]:
        source, _ = mounts[config_dir / rule_file]
        assert (ROOT / source).resolve() == (MONITORING / "alerts.yml").resolve()


def test_monitoring_provisions_grafana_with_the_shipped_dashboard_over_that_prometheus():
    grafana = _services()["grafana"]
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts[PurePosixPath("/etc/grafana/provisioning")][0]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    port = _services()["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cxr-retrieval.yml").read_text())["providers"]
    dashboards = [(path, src) for path, (src, _) in mounts.items()
                  if path.parent == PurePosixPath(provider["options"]["path"])]
    assert [(ROOT / src).resolve() for _, src in dashboards] == [(MONITORING / "grafana-dashboard.json").resolve()]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert {v["type"]: v["query"] for v in dashboard["templating"]["list"]}["datasource"] == "prometheus"


def test_the_pacs_profile_is_orthanc_with_dicomweb_where_the_gateway_is_told_to_look():
    orthanc = _services()["orthanc"]
    env = {k: str(v) for k, v in orthanc["environment"].items()}
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    root = env["ORTHANC__DICOM_WEB__ROOT"].strip("/")
    http_port = _defaults(orthanc["ports"][0]).rsplit(":", 1)[1]
    documented = f"CXR_DICOMWEB_URL=http://orthanc:{http_port}/{root}"
    assert documented in COMPOSE.read_text()
    assert "CXR_DICOMWEB_URL" in _gateway()["environment"]


def _copied_probe_path() -> str:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    (copy,) = [line for line in joined.splitlines() if line.startswith("COPY ") and "grpc_health_probe.py" in line]
    return copy.split()[-1]
