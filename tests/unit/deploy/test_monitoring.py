"""Prometheus scrapes our default ports (the metrics the dashboard and the alerts use, in the live
exposition of the real gateway and Triton: tests/integration/deploy/test_monitoring.py)."""

from pathlib import Path

import yaml

from cxr.settings import Settings

MONITORING = Path(__file__).parents[3] / "deploy" / "monitoring"


def test_the_scrape_targets_are_the_default_ports():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    defaults = Settings()
    assert targets == {"cxr-gateway": [f"127.0.0.1:{defaults.metrics_port}"],
                       "triton": [f"127.0.0.1:{defaults.triton_metrics_port}"]}
    assert config["rule_files"] == ["alerts.yml"]
