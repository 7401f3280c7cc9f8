"""Reports received after the build reach a real gateway's hits within seconds, on FAISS and on Milvus:
the text in hits and GetStudy (with its status and time), the derived labels in the label filter, a
correction replacing the text and a cancellation removing it; the vectors are not touched."""

import contextlib
import shutil
import time
from dataclasses import replace

import grpc
import pytest

from cxr.reports.intake import ReportIntake
from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report, ReportStatus
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from cxr.store import faiss_store
from support import GATEWAY_MODEL, BackgroundGateway, MilvusLiteFile

pytestmark = pytest.mark.triton
SEARCHABLE_S = 10.0  # the bound from the report's acknowledgement to its study's hits
DERIVED = "Pneumothorax"  # a label the report gives, which its study did not have


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def reported(request, served, nih_index, tmp_path_factory):
    """A gateway on its own copy of the NIH index, and the intake of its report ledger."""
    root = tmp_path_factory.mktemp(f"reports-{request.param}")
    settings = replace(served, model=GATEWAY_MODEL, index_dir=root / "indexes", reports_dir=root / "reports",
                       reports_poll_s=0.2)
    store = faiss_store.load(nih_index)
    with contextlib.ExitStack() as stack:
        if request.param == "faiss":
            shutil.copytree(nih_index, settings.index_path(GATEWAY_MODEL))
        else:
            pytest.importorskip("milvus_lite", reason="the milvus case runs Milvus Lite (pip install milvus-lite)")
            lite = stack.enter_context(MilvusLiteFile(root / "milvus.db"))
            lite.write(GATEWAY_MODEL, store.index.reconstruct_n(0, store.count), store.rows(range(store.count)),
                       {key: store.manifest.get(key) for key in ("model", "export_sha256", "source")}, [], "flat")
            settings = replace(settings, index_backend="milvus", milvus_uri=str(root / "milvus.db"))
        background = BackgroundGateway(settings)
        stack.callback(background.stop)
        ledger = ReportLedger(settings.reports_path(GATEWAY_MODEL))
        stack.callback(ledger.close)
        channel = stack.enter_context(grpc.insecure_channel(background.address))
        yield retrieval_pb2_grpc.RetrievalStub(channel), ReportIntake(ledger, lambda text: (DERIVED,)), store


def _study(stub, study_uid: str) -> pb.Study:
    return stub.GetStudy(pb.GetStudyRequest(study_uid=study_uid), timeout=30)


def _until(condition, seconds: float = SEARCHABLE_S):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not seen within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_report_reaches_hits_and_the_label_filter_then_a_correction_and_a_cancellation(reported):
    stub, intake, store = reported
    row = store.rows([5])[0]
    study, patient = row["study_uid"], row["patient_id"]
    intake.accept(Report(study_instance_uid=study, patient_id=patient, findings="Small apical pneumothorax.",
                         impression="Pneumothorax.", time="2026-12-03T08:15:00", source="test"))
    _until(lambda: _study(stub, study).report_status == "final")
    seen = _study(stub, study)
    assert (seen.findings, seen.impression, seen.report_time) == ("Small apical pneumothorax.", "Pneumothorax.",
                                                                  "2026-12-03T08:15:00")
    assert list(seen.labels) == [DERIVED] and seen.labels_derived
    hits = stub.SearchByText(pb.SearchByTextRequest(text="pneumothorax", top_k=50,
                                                    filters=pb.Filters(labels=[DERIVED.lower()])), timeout=30).hits
    assert row["image_id"] in {hit.image_id for hit in hits}
    found = next(hit for hit in hits if hit.image_id == row["image_id"])
    assert found.findings == "Small apical pneumothorax." and found.labels_derived

    intake.accept(Report(study_instance_uid=study, patient_id=patient, impression="No pneumothorax.",
                         status=ReportStatus.CORRECTED, source="test"))
    _until(lambda: _study(stub, study).report_status == "corrected")
    assert _study(stub, study).impression == "No pneumothorax." and not _study(stub, study).findings
    intake.accept(Report(study_instance_uid=study, status=ReportStatus.CANCELLED, source="test"))
    _until(lambda: _study(stub, study).report_status == "cancelled")
    cancelled = _study(stub, study)
    assert not (cancelled.findings or cancelled.impression or cancelled.labels)


def test_other_studies_keep_their_archive_rows(reported):
    stub, _, store = reported
    row = store.rows([400])[0]
    seen = _study(stub, row["study_uid"])
    assert list(seen.labels) == row["labels"] and not seen.labels_derived and seen.report_status == ""
