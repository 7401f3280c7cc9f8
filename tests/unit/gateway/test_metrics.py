"""The gateway's Prometheus counters (gateway.metrics): calls by method and status, refusals by reason,
time by stage, and never a word of a query."""

import time

import grpc
import pytest
from prometheus_client import generate_latest

from cxr import __version__
from gateway.admission import AdmissionInterceptor, Limits
from gateway.metrics import GatewayMetrics, MetricsInterceptor
from support.interceptor_server import search


def test_metrics_count_calls_by_method_status_and_stage_without_patient_data(make_server):
    metrics = GatewayMetrics()
    server = make_server(MetricsInterceptor(metrics), AdmissionInterceptor(Limits(rate_per_s=1.0, burst=1)))
    search(server.stub, milliseconds=5)
    with pytest.raises(grpc.RpcError):
        search(server.stub)
    rejected = 'cxr_gateway_rpcs_total{code="RESOURCE_EXHAUSTED",method="SearchByText"} 1.0'
    deadline = time.monotonic() + 5
    while rejected not in (text := generate_latest(metrics.registry).decode()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the status reaches the client before the server's wrapper has counted it
    assert 'cxr_gateway_rpcs_total{code="OK",method="SearchByText"} 1.0' in text
    assert rejected in text
    assert 'cxr_gateway_rejected_rpcs_total{reason="rate_limit"} 1.0' in text
    assert 'cxr_gateway_stage_seconds_count{method="SearchByText",stage="triton"} 1.0' in text
    assert 'cxr_gateway_stage_seconds_count{method="SearchByText",stage="total"} 2.0' in text
    assert "effusion" not in text


def test_the_gateway_s_version_is_a_label_of_a_gauge_at_1():
    text = generate_latest(GatewayMetrics().registry).decode()
    assert f'cxr_gateway_build_info{{version="{__version__}"}} 1.0' in text
