"""Every metric the Grafana dashboard and the alert rules use exists in the live exposition of the
real gateway and the real Triton; no label carries patient data."""

import json
import re
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cxr.client import RetrievalClient
from cxr.processes import free_ports
from support import BackgroundGateway

MONITORING = Path(__file__).parents[3] / "deploy" / "monitoring"
NAME = re.compile(r"\b(cxr_gateway_\w+|nv_\w+)\b")
# endpoint: a Triton address, never patient data
ALLOWED_LABELS = {"method", "code", "stage", "reason", "model", "le", "version", "endpoint"}
QUERY = "patient jane roe small left pleural effusion"


def _dashboard_names() -> set[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in NAME.findall(expr)}


def _alert_names() -> set[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return {name for group in rules["groups"] for rule in group["rules"] for name in NAME.findall(rule["expr"])}


def _samples(port: int) -> list[tuple[str, dict]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', rest.split("}")[0])) if rest else {}
            samples.append((name.split()[0], labels))
    return samples


@pytest.mark.triton
def test_every_dashboard_and_alert_metric_is_exposed_and_no_label_holds_patient_data(served, nih_index):
    (metrics_port,) = free_ports(1)
    background = BackgroundGateway(replace(served, model="medsiglip-tiny", metrics_port=metrics_port))
    try:
        with RetrievalClient(background.address) as client:
            client.search_text(QUERY, top_k=3)
        samples = _samples(metrics_port) + _samples(served.triton_metrics_port)
    finally:
        background.stop()
    exposed = {name for name, _ in samples}
    missing = (_dashboard_names() | _alert_names()) - exposed
    assert not missing, f"used by deploy/monitoring but not exposed: {sorted(missing)}"
    gateway_labels = {key for name, labels in samples if name.startswith("cxr_") for key in labels}
    assert gateway_labels <= ALLOWED_LABELS, gateway_labels
    values = {value for _, labels in samples for value in labels.values()}
    assert not any(word in value for value in values for word in ("jane", "effusion"))
