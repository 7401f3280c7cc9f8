"""deploy/k8s is valid Kubernetes (the schemas of kubernetes-validate, offline) and does what it says:
probes on the gateway's health port, Triton reachable only from the gateway and Prometheus, Services
and autoscalers that find their Deployments, CXR_* names the gateway reads and would start with,
and a gateway image without torch that runs as a non-root user."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import tomllib
import yaml

from cxr.settings import FIELDS, Settings, SettingsError, load_settings
from export.triton_config import TRT_CACHE_DIR
from gateway import tls, writes

ROOT = Path(__file__).parents[3]
K8S = ROOT / "deploy" / "k8s"
ARCHIVE = K8S / "archive"  # a kustomize Component an overlay adds
DOCKERFILE = ROOT / "deploy" / "gateway.Dockerfile"
# The oldest Kubernetes still maintained by the major distributions when this was written, and
# the newest kubernetes-validate ships.
VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
PROMETHEUS = {"namespace": "monitoring", "pod": {"app.kubernetes.io/name": "prometheus"}}
DEFAULTS = Settings()


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _documents() -> list[tuple[str, dict]]:
    return [(name, doc) for name in _kustomization()["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _all(kind: str) -> list[dict]:
    return [doc for _, doc in _documents() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict:
    (doc,) = [doc for doc in _all(kind) if doc["metadata"]["name"] == name]
    return doc


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels(deployment: str) -> dict:
    return _one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _env(container: dict) -> dict[str, str]:
    """Literal values only; variables from Secrets or ConfigMaps are left out."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_the_kustomization_lists_every_manifest_and_sets_the_namespace():
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_kustomization()["resources"]) == on_disk
    assert _kustomization()["namespace"] == _one("Namespace", "cxr")["metadata"]["name"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", _kustomization()["resources"])
def test_every_manifest_is_valid_kubernetes(name, version):
    for doc in yaml.safe_load_all((K8S / name).read_text()):
        if doc:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not valid {version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_kustomize_builds_the_directory_into_one_namespace():
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(K8S)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(K8S)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(objects) == len(_documents())
    assert {o["metadata"].get("namespace", "cxr") for o in objects if o["kind"] != "Namespace"} == {"cxr"}


def test_the_gateway_is_probed_on_its_grpc_health_port_through_mutual_tls():
    container = _container("cxr-gateway")
    port = _ports(container)["grpc"]
    assert port == DEFAULTS.gateway_port == int(_env(container)["CXR_GATEWAY_PORT"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    service = f"{_one('Service', 'cxr-gateway')['metadata']['name']}.{_kustomization()['namespace']}.svc"
    probe_script = _copied_probe_path()
    for kind, ready in (("readinessProbe", True), ("livenessProbe", False)):
        command = container[kind]["exec"]["command"]
        assert command[:2] == ["python", probe_script], kind
        options = dict(arg.removeprefix("--").partition("=")[::2] for arg in command[2:])
        assert int(options["port"]) == port
        assert ("ready" in options) == ready, f"{kind}: liveness must not wait for Triton, readiness must"
        assert options["server-name"] == service
        for name in ("ca", "cert", "key"):
            assert Path(options[name]).parent == Path(mounts["probe-tls"]), (kind, name)


def test_triton_is_reachable_only_from_the_gateway_and_prometheus():
    policy = _one("NetworkPolicy", "triton-ingress")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], _pod_labels("triton"))
    assert "Ingress" in policy["policyTypes"]
    allowed: dict[str, set[int]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        ports = {p["port"] for p in rule["ports"]}
        assert ports <= {DEFAULTS.triton_http_port, DEFAULTS.triton_grpc_port, DEFAULTS.triton_metrics_port}
        for peer in rule["from"]:
            allowed.setdefault(_peer(peer), set()).update(ports)
    assert allowed == {"gateway": {DEFAULTS.triton_grpc_port}, "prometheus": {DEFAULTS.triton_metrics_port}}


def test_the_gateway_metrics_port_is_open_to_prometheus_only():
    policy = _one("NetworkPolicy", "cxr-gateway-ingress")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], _pod_labels("cxr-gateway"))
    metrics_rules = [rule for rule in policy["ingress"] if DEFAULTS.metrics_port in {p["port"] for p in rule["ports"]}]
    assert metrics_rules and all(rule.get("from") for rule in metrics_rules)
    assert {_peer(peer) for rule in metrics_rules for peer in rule["from"]} == {"prometheus"}


def _peer(peer: dict) -> str:
    pods = peer.get("podSelector", {}).get("matchLabels", {})
    namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
    if not namespace and _selects(pods, _pod_labels("cxr-gateway")):
        return "gateway"
    if namespace == {"kubernetes.io/metadata.name": PROMETHEUS["namespace"]} and pods == PROMETHEUS["pod"]:
        return "prometheus"
    raise AssertionError(f"unexpected peer {peer}")


def test_the_gateway_runs_unprivileged_on_a_read_only_root():
    pod = _one("Deployment", "cxr-gateway")["spec"]["template"]["spec"]
    context = _container("cxr-gateway")["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and context["runAsNonRoot"]
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid() != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert _one("ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False


def test_triton_runs_unprivileged_on_one_gpu():
    pod = _one("Deployment", "triton")["spec"]["template"]["spec"]
    context = _container("triton")["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
    resources = _container("triton")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1


def test_triton_runs_as_docker_compose_runs_it():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    container = _container("triton")
    assert container["image"] == re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", compose["image"])
    secret_flag = re.compile(r"\$\{TRITON_ADMIN_KEY:\?[^}]*\}")
    assert container["args"] == [secret_flag.sub("$(TRITON_ADMIN_KEY)", arg) for arg in compose["command"]]
    (key,) = [e for e in container["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert "secretKeyRef" in key["valueFrom"]
    ports = _ports(container)
    assert (ports["http"], ports["grpc"], ports["metrics"]) == (
        DEFAULTS.triton_http_port, DEFAULTS.triton_grpc_port, DEFAULTS.triton_metrics_port)
    for kind, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                       ("livenessProbe", "/v2/health/live")):
        assert container[kind]["httpGet"] == {"path": path, "port": "http"}, kind
    volumes = {v["name"]: v for v in _one("Deployment", "triton")["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "persistentVolumeClaim" in volumes[mounts["/models"]]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_every_service_selects_a_deployment_and_targets_its_ports():
    deployments = [d["metadata"]["name"] for d in _all("Deployment")]
    expected = {"triton": {DEFAULTS.triton_http_port, DEFAULTS.triton_grpc_port, DEFAULTS.triton_metrics_port},
                "triton-pods": {DEFAULTS.triton_grpc_port},
                "cxr-gateway": {DEFAULTS.gateway_port, DEFAULTS.http_port, DEFAULTS.metrics_port}}
    for service in _all("Service"):
        spec, name = service["spec"], service["metadata"]["name"]
        (target,) = [d for d in deployments if _selects(spec["selector"], _pod_labels(d))]
        container_ports = _ports(_container(target))
        for port in spec["ports"]:
            assert port["targetPort"] in container_ports, (name, port)
            assert container_ports[port["targetPort"]] == port["port"], (name, port)
        assert {p["port"] for p in spec["ports"]} == expected[name]


def test_every_deployment_selects_its_own_pods():
    for deployment in _all("Deployment"):
        spec = deployment["spec"]
        assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])


def test_autoscalers_and_disruption_budgets_target_the_deployments():
    deployments = {d["metadata"]["name"]: d for d in _all("Deployment")}
    targets = [hpa["spec"]["scaleTargetRef"] for hpa in _all("HorizontalPodAutoscaler")]
    assert sorted(t["name"] for t in targets) == sorted(deployments)
    assert all(t["kind"] == "Deployment" and t["apiVersion"] == "apps/v1" for t in targets)
    for name, deployment in deployments.items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
    budgets = [pdb["spec"]["selector"]["matchLabels"] for pdb in _all("PodDisruptionBudget")]
    assert sorted(d for d in deployments for b in budgets if _selects(b, _pod_labels(d))) == sorted(deployments)


def test_triton_scales_on_the_queue_time_the_adapter_serves():
    (metric,) = _one("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = [r for r in adapter["rules"]["custom"] if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert f'namespace="{_kustomization()["namespace"]}"' in rule["seriesQuery"]
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    gateway = _one("HorizontalPodAutoscaler", "cxr-gateway")["spec"]["metrics"]
    assert [m["resource"]["name"] for m in gateway] == ["cpu"]


def test_the_gateway_environment_is_settings_it_would_start_with(tmp_path):
    container = _container("cxr-gateway")
    names = [e["name"] for e in container["env"] if e["name"].startswith("CXR_")]
    unknown = [name for name in names if name.removeprefix("CXR_").lower() not in FIELDS]
    assert not unknown, f"not fields of cxr.settings.Settings: {unknown}"
    settings = load_settings(tmp_path, environ=_env(container))
    tls.check_exposure(settings, settings.gateway_address)  # beyond loopback: TLS and tokens, or refusal
    assert settings.tls_client_ca, "clients must bring certificates (mutual TLS)"
    assert settings.metrics_port == _ports(container)["metrics"]
    triton = _one("Service", "triton")["metadata"]["name"]
    assert settings.triton_endpoints == (f"{_headless_triton()['metadata']['name']}:{DEFAULTS.triton_grpc_port}",)
    assert settings.triton_grpc_url == f"{triton}:{DEFAULTS.triton_grpc_port}"
    mounts = {Path(m["mountPath"]): m for m in container["volumeMounts"]}
    for path in (settings.tls_cert, settings.tls_key, settings.tls_client_ca, Path(settings.jwt_jwks)):
        assert path.parent in mounts and mounts[path.parent]["readOnly"], path
    for path in (settings.model_repository, settings.index_dir):
        assert path in mounts and mounts[path]["readOnly"], path
    assert not mounts[settings.audit_log.parent].get("readOnly"), "the audit log must be writable"
    copies = mounts[settings.index_copy_dir]  # served indexes are copied here: not /tmp's 256 Mi
    assert not copies.get("readOnly")
    volume = next(v for v in _one("Deployment", "cxr-gateway")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == copies["name"])
    assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"] == \
        _one("PersistentVolumeClaim", "cxr-indexes")["spec"]["resources"]["requests"]["storage"]


def _headless_triton() -> dict:
    (service,) = [s for s in _all("Service") if s["spec"].get("clusterIP") == "None"]
    return service


def test_every_triton_pod_gets_calls_through_a_headless_service_the_gateway_looks_up(tmp_path):
    service = _headless_triton()
    assert _selects(service["spec"]["selector"], _pod_labels("triton"))
    assert not service["spec"].get("publishNotReadyAddresses"), "a Triton still loading must get no call"
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (DEFAULTS.triton_grpc_port, "grpc")
    settings = load_settings(tmp_path, environ=_env(_container("cxr-gateway")))
    assert settings.triton_dns == f"{service['metadata']['name']}:{port['port']}" and not settings.triton_urls
    assert settings.triton_dns_refresh_s <= 10  # an added pod gets calls within seconds of being ready


def _references(container: dict, kind: str) -> dict[str, dict]:
    """Variable -> its secretKeyRef or configMapKeyRef (`kind`)."""
    return {e["name"]: e["valueFrom"][kind] for e in container["env"] if kind in e.get("valueFrom", {})}


def test_the_gateway_gets_its_dicomweb_settings_from_an_optional_secret():
    container = _container("cxr-gateway")
    from_secret = {name: ref for name, ref in _references(container, "secretKeyRef").items()
                   if name.startswith("CXR_DICOMWEB_")}
    dicomweb = {name for name in FIELDS if name.startswith("dicomweb_")}
    assert {name.removeprefix("CXR_").lower() for name in from_secret} == dicomweb
    assert {ref["name"] for ref in from_secret.values()} == {"cxr-dicomweb"}
    assert all(ref["optional"] is True for ref in from_secret.values()), "without the Secret the gateway must start"
    volumes = {v["name"]: v for v in _one("Deployment", "cxr-gateway")["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    (ca_mount,) = [m for m in mounts.values() if volumes[m["name"]].get("secret", {}).get("secretName") == "cxr-dicomweb"]
    assert ca_mount["readOnly"] and volumes[ca_mount["name"]]["secret"]["optional"] is True
    assert f"ca-file={ca_mount['mountPath']}/ca.crt" in (K8S / "README.md").read_text()


SIGN_IN_SECRETS = {"oidc_client_secret", "oidc_session_key"}
JWKS = {"cxr-jwks": {"issuer": "https://idp.hospital.example/realms/radiology", "audience": "cxr-retrieval"}}


def _resolved(container: dict, config_maps: dict[str, dict], secrets: dict[str, dict]) -> dict[str, str]:
    """The container's environment as the kubelet makes it, with the given ConfigMaps and Secrets (name ->
    data) present: an optional reference to a missing object or key leaves its variable unset."""
    environ = _env(container)
    for kind, objects in (("configMapKeyRef", config_maps), ("secretKeyRef", secrets)):
        for name, ref in _references(container, kind).items():
            if ref["key"] in objects.get(ref["name"], {}):
                environ[name] = objects[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional") is True, f"{name}: the pod would not start without {ref['name']}"
    return environ


def test_single_sign_on_comes_from_an_optional_config_map_and_secret_and_every_setting_is_reachable():
    container = _container("cxr-gateway")
    config_map, secret = _references(container, "configMapKeyRef"), _references(container, "secretKeyRef")
    oidc = {name for name in FIELDS if name.startswith("oidc_")}
    from_config_map = {n.removeprefix("CXR_").lower() for n, ref in config_map.items() if ref["name"] == "cxr-oidc"}
    from_secret = {n.removeprefix("CXR_").lower() for n, ref in secret.items() if ref["name"] == "cxr-oidc"}
    assert from_config_map | from_secret == oidc, "every oidc_* setting can be given"
    assert from_secret == SIGN_IN_SECRETS, "secrets in the Secret, nothing else there, none in the ConfigMap"
    assert all(ref["optional"] is True for ref in [*config_map.values(), *secret.values()]
               if ref["name"] == "cxr-oidc")
    volumes = {v["name"]: v for v in _one("Deployment", "cxr-gateway")["spec"]["template"]["spec"]["volumes"]}
    (ca_mount,) = [m for m in container["volumeMounts"]
                   if volumes[m["name"]].get("configMap", {}).get("name") == "cxr-oidc"]
    assert ca_mount["readOnly"] and volumes[ca_mount["name"]]["configMap"]["optional"] is True
    assert f"ca-file={ca_mount['mountPath']}/ca.crt" in (K8S / "README.md").read_text()


def _sign_in_objects() -> tuple[dict, dict]:
    """The cxr-oidc ConfigMap and Secret as README.md's commands create them (their keys, made-up values)."""
    readme = (K8S / "README.md").read_text()
    config_map = {"issuer": "https://idp.hospital.example/realms/radiology", "client-id": "cxr-retrieval",
                  "role-scopes": "radiologist=search,studies;clerk=search"}
    secret = {"client-secret": "s" * 40, "session-key": "k" * 44}
    for key in [*config_map, *secret]:
        assert f"--from-literal={key}=" in readme, f"README.md's commands create {key}"
    return config_map, secret


def test_the_gateway_starts_without_single_sign_on_and_with_it_as_documented(tmp_path):
    container = _container("cxr-gateway")
    without = load_settings(tmp_path, environ=_resolved(container, JWKS, {}))
    assert not without.oidc_issuer and without.auth == "token"
    config_map, secret = _sign_in_objects()
    signed_in = load_settings(tmp_path, environ=_resolved(container, dict(JWKS, **{"cxr-oidc": config_map}),
                                                          {"cxr-oidc": secret}))
    assert signed_in.oidc_issuer == config_map["issuer"] and signed_in.oidc_session_key == secret["session-key"]
    assert signed_in.oidc_roles_claim == DEFAULTS.oidc_roles_claim  # keys left out keep their defaults
    tls.check_exposure(signed_in, signed_in.gateway_address)


def test_replicas_share_sign_in_sessions_through_the_secret_not_through_affinity(tmp_path):
    """A gateway beyond loopback refuses single sign-on without the shared key, so a ConfigMap without the
    Secret fails at start instead of signing clinicians in on one replica and out on the next."""
    service = _one("Service", "cxr-gateway")["spec"]
    assert service.get("sessionAffinity", "None") == "None"
    config_map, _ = _sign_in_objects()
    with pytest.raises(SettingsError, match="oidc_session_key"):
        load_settings(tmp_path, environ=_resolved(_container("cxr-gateway"), dict(JWKS, **{"cxr-oidc": config_map}),
                                                  {}))
    readme = (K8S / "README.md").read_text()
    assert "session-key" in readme and "sessionAffinity" in readme


def test_every_folder_the_gateway_writes_is_on_a_writable_volume_of_its_pod(tmp_path):
    """writes.written_folders is what the gateway writes (it checks each at start). The report ledger was under
    the read-only indexes volume, where SQLite could not open it in WAL mode; it is per pod, since no shared
    volume can hold a WAL database that pods on several nodes write."""
    pod = _one("Deployment", "cxr-gateway")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in _container("cxr-gateway")["volumeMounts"]}
    settings = load_settings(tmp_path, environ=_env(_container("cxr-gateway")))
    folders = writes.written_folders(settings)
    assert set(folders) == {"audit_log", "index_copy_dir", "reports_dir"}
    for name, folder in folders.items():
        under = [m for m in mounts if folder.is_relative_to(m)]
        assert under, f"{name}: {folder} is on the read-only root"
        mount = mounts[max(under, key=lambda m: len(m.parts))]
        volume = volumes[mount["name"]]
        assert not mount.get("readOnly") and not volume.get("persistentVolumeClaim", {}).get("readOnly"), name
    ledger = volumes[mounts[folders["reports_dir"]]["name"]]
    assert "emptyDir" in ledger, "a ledger is SQLite in WAL mode: one node's, not a shared claim's"
    assert "CXR_REPORTS_DIR" in (K8S / "README.md").read_text()


def test_tensorrt_engines_go_to_a_writable_shared_volume_not_the_read_only_models():
    pod = _one("Deployment", "triton")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container("triton")["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    cache = mounts[TRT_CACHE_DIR]
    assert not cache.get("readOnly")
    claim = volumes[cache["name"]]["persistentVolumeClaim"]
    assert not claim.get("readOnly")
    assert _one("PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not Path(TRT_CACHE_DIR).is_relative_to("/models")


def test_triton_has_time_to_build_its_engines_before_the_startup_probe_gives_up():
    probe = _container("triton")["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 15 * 60


def _archive_overlay() -> list[dict]:
    """The base with the archive component applied: by kustomize where installed, else by applying the
    component's JSON patch here (it only appends)."""
    component = yaml.safe_load((ARCHIVE / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    docs = [doc for _, doc in _documents()]
    docs += [doc for name in component["resources"] for doc in yaml.safe_load_all((ARCHIVE / name).read_text())]
    (patch,) = component["patches"]
    (gateway,) = [d for d in docs if d["kind"] == patch["target"]["kind"] and
                  d["metadata"]["name"] == patch["target"]["name"]]
    for op in yaml.safe_load((ARCHIVE / patch["path"]).read_text()):
        assert op["op"] == "add" and op["path"].endswith("/-")
        node = gateway
        for key in op["path"].strip("/").split("/")[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.append(op["value"])
    return docs


def test_the_archive_component_gives_the_gateway_a_read_only_archive_and_stays_valid(tmp_path):
    docs = _archive_overlay()
    if shutil.which("kubectl"):
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
            {"resources": [os.path.relpath(K8S, tmp_path)], "components": [os.path.relpath(ARCHIVE, tmp_path)]}))
        built = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        by_kustomize = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
        gateway = [d for d in by_kustomize if d["kind"] == "Deployment" and d["metadata"]["name"] == "cxr-gateway"]
        ours = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cxr-gateway"]
        assert gateway[0]["spec"]["template"]["spec"]["volumes"] == ours[0]["spec"]["template"]["spec"]["volumes"]
        docs = by_kustomize
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    (gateway,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cxr-gateway"]
    pod = gateway["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "archive"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "archive"]
    claim = volume["persistentVolumeClaim"]
    assert mount["readOnly"] and claim["readOnly"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim["claimName"]]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert mount["mountPath"] in (ARCHIVE / "kustomization.yaml").read_text(), "the header says where to build from"


def test_the_gateway_image_has_no_torch_and_a_non_root_user():
    text = DOCKERFILE.read_text()
    installs = [line for line in _instructions(text, "RUN") if "pip install" in line]
    extras = {extra for line in installs for group in re.findall(r"'\.\[([^\]]*)\]'", line)
              for extra in group.split(",")}
    assert extras == {"serve", "milvus"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    assert not [d for d in installed if re.match(r"torch\b|open_clip", d)], "the gateway image must not need torch"
    assert not any(re.search(r"\btorch\b", line.split("&&")[0]) for line in installs)
    assert _dockerfile_uid() > 0
    assert {"50051", "8003"} <= {p for line in _instructions(text, "EXPOSE") for p in line.split()}
    assert _instructions(text, "ENTRYPOINT")[-1] == '["python", "-m", "gateway.server"]'


def test_the_gateway_imports_only_what_the_image_holds():
    """The image copies cxr/ and gateway/ and installs no torch: the gateway must not reach further."""
    script = ("import json, sys, gateway.server; "
              "print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    assert not {"torch", "torchvision", "open_clip"} & set(modules)
    ours = {Path(f).resolve().relative_to(ROOT).parts[0] for f in modules.values()
            if f and Path(f).resolve().is_relative_to(ROOT) and ".venv" not in Path(f).parts}
    copied = {source.rstrip("/") for line in _instructions(DOCKERFILE.read_text(), "COPY") if "--from" not in line
              for source in line.split()[:-1]}
    assert ours <= copied, f"the gateway imports from {sorted(ours - copied)}, which the image does not copy"


def test_the_image_generates_the_stubs_as_the_makefile_does():
    makefile = (ROOT / "Makefile").read_text()
    (make_protoc,) = re.findall(r"grpc_tools\.protoc ([^\n]*)", makefile)
    proto = re.search(r"^PROTO := (\S+)", makefile, re.M).group(1)
    expected = shlex.split(make_protoc.replace("$(PROTO)", proto))
    (run,) = [line for line in _instructions(DOCKERFILE.read_text(), "RUN") if "grpc_tools.protoc" in line]
    protoc = run.split("grpc_tools.protoc", 1)[1].split("&&")[0]
    assert shlex.split(protoc) == expected


def test_the_build_context_is_an_allowlist():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    for never in (".venv", ".cache", ".run", "model_repository", "indexes", "weights", "tests", "../shared"):
        assert not any(a == never or a.startswith(never + "/") for a in allowed), never
    copies = [line.split()[:-1] for line in _instructions(DOCKERFILE.read_text(), "COPY") if "--from" not in line]
    for source in (source for sources in copies for source in sources):
        assert any(source == a.rstrip("/") or source.startswith(a) for a in allowed), f"{source} is not in the context"


def _instructions(text: str, keyword: str) -> list[str]:
    """Arguments of every `keyword` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line[len(keyword):].strip() for line in joined.splitlines() if line.startswith(keyword + " ")]


def _dockerfile_uid() -> int:
    return int(_instructions(DOCKERFILE.read_text(), "USER")[-1].split(":")[0])


def _copied_probe_path() -> str:
    (copy,) = [line for line in _instructions(DOCKERFILE.read_text(), "COPY") if "grpc_health_probe.py" in line]
    return copy.split()[-1]
