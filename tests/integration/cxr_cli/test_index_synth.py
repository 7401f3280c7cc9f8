"""`cxr index synth` then a gateway: the synthetic index, written through the CLI for a model the real
Triton serves, is accepted (grpc health SERVING) and searched (SearchByText answers from it)."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import to_environment
from cxr_cli.main import main
from gateway.server import SERVICE_NAME
from support import BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"


def _wait_serving(channel, seconds: float) -> None:
    """The service's own status: the overall one reads SERVING (grpc's default) before the gateway's first look."""
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    deadline = time.monotonic() + seconds
    while True:
        try:
            if health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as exc:  # NOT_FOUND until the first look sets it
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        assert time.monotonic() < deadline, "the gateway did not accept the synthetic index (see its log)"
        time.sleep(0.2)


def test_a_synthetic_index_written_by_the_cli_is_served(served, tmp_path, monkeypatch):
    settings = replace(served, model=MODEL, index_dir=tmp_path / "indexes")  # not the session's NIH index
    monkeypatch.chdir(tmp_path)
    for name, value in to_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["index", "synth", "--model", MODEL, "--count", "2000", "--index-type", "ivf"]) == 0
    gateway = BackgroundGateway(settings)
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            _wait_serving(channel, 30)
            response = pb_grpc.RetrievalStub(channel).SearchByText(
                pb.SearchByTextRequest(text="pleural effusion", top_k=5), timeout=30)
    finally:
        gateway.stop()
    assert response.model == MODEL
    assert len(response.hits) == 5
    assert all(hit.image_id.startswith("syn") for hit in response.hits)
