"""Shared fixtures: the real sample data, exported twins, and a real Triton on loopback."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxr.registry import get_model
from support import DATA_DIR, GATEWAY_MODEL, SERVED, make_settings


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Twins are built once per test session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def report_texts() -> list[str]:
    """Real IU-Xray findings and impressions, one longer than any context length."""
    with (DATA_DIR / "iu" / "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["impression"] for r in rows[:6] if r["impression"]] + [r["findings"] for r in rows[:4] if r["findings"]]
    return texts + [" ".join(r["findings"] for r in rows[:40])]


@pytest.fixture(scope="session")
def xray_paths() -> list[Path]:
    """Real chest X-rays: NIH 512 px grayscale, TBX11K RGB, JPEGs, and NIH 64 px samples."""
    samples = DATA_DIR / "cxr_samples"
    return sorted(samples.glob("*.png")) + sorted(samples.glob("*.jpg")) + sorted((DATA_DIR / "nih800" / "valid" / "1_abnormal").glob("*.png"))[:3]


@pytest.fixture(scope="session")
def encoders(tmp_path_factory, cache_dir):
    """The PyTorch side of every served model, loaded from the checkpoint its export reads."""
    from export.families import load_encoder
    from export.repository import resolve_source

    settings = make_settings(tmp_path_factory.mktemp("encoders"), cache_dir)
    return {name: load_encoder(get_model(name), resolve_source(get_model(name), settings, None)) for name in SERVED}


@pytest.fixture(scope="session")
def served(tmp_path_factory, cache_dir):
    """Every twin exported into one repository and served by a real tritonserver."""
    from cxr.processes import stop_process
    from cxr.triton import server_process
    from export.repository import export_model

    settings = make_settings(tmp_path_factory.mktemp("served"), cache_dir)
    for name in SERVED:
        # fp32 whatever the registry ships (cxr-mini: int8), so the e2e parity tests hold every export
        # to PyTorch at 0.9999; int8's own tolerance is tested in tests/unit/export/test_quantization.py.
        export_model(get_model(name), settings, precision="fp32", log=lambda *_: None)
    process, log_file = server_process.start(settings)
    try:
        models = [m for name in SERVED for m in (get_model(name).image_model, get_model(name).text_model)]
        server_process.wait_ready(settings, models, process, timeout=180, log_file=log_file)
        yield settings
    finally:
        stop_process(process)



@pytest.fixture(scope="session")
def nih_index(served):
    """The 800-image NIH sample indexed with the gateway's model through Triton."""
    from cxr import archives
    from cxr.catalog import ExportedModel
    from indexing.build import BuildOptions, build_index

    records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")
    model = ExportedModel.load(served.model_repository, GATEWAY_MODEL)
    build_index(records, model, served, served.index_path(GATEWAY_MODEL), BuildOptions(progress=False))
    return served.index_path(GATEWAY_MODEL)


@pytest.fixture(scope="session")
def gateway(served, nih_index):
    """A real gateway in front of the real Triton, serving GATEWAY_MODEL; yields its address."""
    from dataclasses import replace

    from support import BackgroundGateway

    background = BackgroundGateway(replace(served, model=GATEWAY_MODEL))
    try:
        yield background.address
    finally:
        background.stop()


@pytest.fixture
def stub(gateway):
    import grpc

    from cxr.retrieval.v1 import retrieval_pb2_grpc

    with grpc.insecure_channel(gateway, options=[("grpc.max_send_message_length", 80 << 20)]) as channel:
        yield retrieval_pb2_grpc.RetrievalStub(channel)


@pytest.fixture(scope="session")
def dicom_variants(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """The sample radiograph in every transfer syntax of benchmarks.dicom_variants.MATRIX, made by dcmtk
    (JPEG 2000 by pydicom with OpenJPEG): {(native, variant): file}, each native's own file under
    (native, "native")."""
    from benchmarks import dicom_variants

    if reason := dicom_variants.missing():
        pytest.skip(reason)
    return dicom_variants.matrix(tmp_path_factory.mktemp("dicom-variants"))
