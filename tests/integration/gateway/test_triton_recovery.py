"""Triton stopped mid-run: queries get UNAVAILABLE; Triton back: they succeed, same gateway."""

import time
from dataclasses import replace

import grpc
import pytest

from cxr import archives
from cxr.catalog import ExportedModel
from cxr.processes import stop_process
from cxr.registry import get_model
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from cxr.triton import server_process
from export.repository import export_model
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, BackgroundGateway, make_settings

pytestmark = pytest.mark.triton
MODEL = "siglip-tiny"


def _start_triton(settings):
    process, log_file = server_process.start(settings)
    server_process.wait_ready(settings, [get_model(MODEL).image_model, get_model(MODEL).text_model], process, 120,
                            log_file)
    return process


def test_unavailable_while_triton_is_down_then_recovers_without_a_gateway_restart(tmp_path, cache_dir):
    settings = replace(make_settings(tmp_path, cache_dir), model=MODEL)
    export_model(get_model(MODEL), settings, log=lambda *_: None)
    triton = _start_triton(settings)
    records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")[:40]
    build_index(records, ExportedModel.load(settings.model_repository, MODEL), settings, settings.index_path(MODEL),
                BuildOptions(progress=False, workers=1))
    gateway = BackgroundGateway(settings)
    request = pb.SearchByTextRequest(text="pleural effusion", top_k=3)
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            assert len(stub.SearchByText(request).hits) == 3
            stop_process(triton)
            with pytest.raises(grpc.RpcError) as error:
                stub.SearchByText(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "make serve" in error.value.details()
            triton = _start_triton(settings)
            assert len(_retry(lambda: stub.SearchByText(request, timeout=10), seconds=60).hits) == 3
    finally:
        gateway.stop()
        stop_process(triton)


def _retry(call, seconds: float):
    """gRPC reconnects with backoff: allow it a few attempts."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
