"""Issue 19's proof, end to end on real parts: a real Orthanc holds chest X-rays in twelve transfer syntaxes
and two SR reports; the DICOMweb build indexes every image through the real Triton (none skipped) and
reads the SR; `cxr reports listen` (its own process) takes ORU^R01 messages over a real MLLP connection
(a final report, a corrected one, a cancelled one, one naming another patient, one for a study the PACS
does not hold yet); `cxr reports import` reads a FHIR NDJSON export for the rest. A real gateway then
shows every study's current report and derived labels; the mismatched report is refused (AE) and its
study unchanged; the waiting report is attached when its study's images arrive and the index is rebuilt."""

import base64
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace

import grpc
import pytest

from benchmarks import dicom_variants, orthanc
from cxr import dicomweb
from cxr.catalog import ExportedModel
from cxr.reports.intake import ReportIntake
from cxr.reports.labeler import labels
from cxr.reports.ledger import ReportLedger
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from cxr.settings import to_environment
from indexing.build import BuildOptions
from indexing.dicomweb_build import build_from_pacs
from support import DATA_DIR, GATEWAY_MODEL, BackgroundGateway, sr
from support.hl7_messages import MllpClient, fields

pytestmark = pytest.mark.triton
# Every lossless and lossy syntax a PACS stores chest images in that the gateway reads (12-bit JPEG
# Extended is refused, tests/integration/gateway/test_transfer_syntaxes.py).
SYNTAXES = ("explicit-le", "implicit-le", "big-endian", "deflated", "rle", "jpeg-baseline", "jpeg-lossless-p14",
            "jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg-ls-near-lossless", "jpeg-2000-lossless", "jpeg-2000")
STUDIES = 12
SEARCHABLE_S = 10.0
OPTIONS = BuildOptions(progress=False, batch_size=8, workers=1)
SR_REPORTS = {0: ("Heart size is enlarged.", "Cardiomegaly."), 1: ("Right upper lobe mass.", "Mass.")}
FHIR_REPORTS = {7: "FINDINGS: Hyperexpanded lungs. IMPRESSION: Emphysema.",
                8: "FINDINGS: Small right apical pneumothorax. IMPRESSION: Pneumothorax.",
                9: "IMPRESSION: Hiatal hernia.",
                10: "FINDINGS: Lungs are clear. IMPRESSION: No acute cardiopulmonary disease."}


@pytest.fixture(scope="module")
def hospital(served, tmp_path_factory):
    """The PACS (every study but the last, in many syntaxes, with two SR), the index built from it with
    its SR read, a gateway on it, and `cxr reports listen` on the same ledger."""
    if reason := orthanc.missing() or dicom_variants.missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("hospital")
    grouped: dict[str, list] = {}
    for image in orthanc.nih_images(DATA_DIR, 3 * STUDIES, first=200, per_study=2):
        grouped.setdefault(image.study_uid, []).append(image)
    studies = list(grouped.values())[:STUDIES]  # a patient's consecutive images share a study: 1 or 2 each
    images = [image for study in studies for image in study]
    settings = replace(served, model=GATEWAY_MODEL, index_dir=root / "indexes", reports_dir=root / "reports",
                       reports_poll_s=0.2)
    (root / "dicom").mkdir()
    files = [dicom_variants.make(orthanc.dataset(image), SYNTAXES[i % len(SYNTAXES)], root / "dicom" / f"{i}.dcm")
             for i, image in enumerate(images)]
    reports = [sr.write(sr.text_report(sr.BASIC_TEXT if n == 0 else sr.COMPREHENSIVE, studies[n][0].study_uid,
                                       studies[n][0].patient_id, *SR_REPORTS[n], accession=studies[n][0].accession),
                        root / "sr") for n in SR_REPORTS]
    with orthanc.Orthanc(root / "orthanc") as pacs:
        orthanc.stow(pacs.url, files[:-len(studies[-1])] + reports)
        with ReportLedger(settings.reports_path(GATEWAY_MODEL)) as ledger:
            built = _build(pacs, settings, ledger)
        gateway = BackgroundGateway(settings)
        listener, port = _listen(settings)
        try:
            yield {"pacs": pacs, "settings": settings, "studies": studies, "files": files, "built": built,
                   "gateway": gateway, "port": port, "images": len(images)}
        finally:
            listener.terminate()
            listener.wait(30)
            gateway.stop()


def _build(pacs, settings, ledger) -> dict:
    model = ExportedModel.load(settings.model_repository, GATEWAY_MODEL)
    client = dicomweb.connect(pacs.url, orthanc.USER, orthanc.PASSWORD)
    return build_from_pacs(client, dicomweb.Query.parse("CR,DX"), model, settings,
                           settings.index_path(GATEWAY_MODEL), OPTIONS, intake=lambda: ReportIntake(ledger, labels))


def _listen(settings) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "cxr_cli", "reports", "listen", "--port", "0", "--model",
                                GATEWAY_MODEL], env={**os.environ, **to_environment(settings)},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found = re.search(r"127\.0\.0\.1:(\d+)", process.stdout.readline())
    assert found, "`cxr reports listen` did not say where it listens"
    return process, int(found[1])


def oru(control: str, patient: str, accession: str, status: str, *lines: str) -> str:
    """A synthetic ORU^R01 with one OBR (OBR-3 accession, OBR-22 time, OBR-25 status) and TX OBX lines."""
    segments = [f"MSH|^~\\&|SYNTH-RIS|SYNTH|CXR|SYNTH|20261203080000||ORU^R01^ORU_R01|{control}|P|2.5.1",
                f"PID|1||{patient}^^^SYNTH^MR||SYNTHETIC^PATIENT", f"ORC|RE||{accession}",
                f"OBR|1||{accession}|36643-5^XR Chest 2 Views^LN|||20261203073000" + "|" * 15
                + f"20261203080000|||{status}"]
    segments += [f"OBX|{i}|TX|&GDT^General Diagnostic Text^DCM||{line}||||||F" for i, line in enumerate(lines, 1)]
    return "\r".join(segments) + "\r"


def fhir_export(studies, path):
    """One Patient (MR identifier), ImagingStudy (DICOM uid) and DiagnosticReport (accession, text) per study."""
    lines = []
    for n, text in FHIR_REPORTS.items():
        image = studies[n][0]
        lines.append({"resourceType": "Patient", "id": f"p{n}", "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "value": image.patient_id}]})
        lines.append({"resourceType": "ImagingStudy", "id": f"is{n}", "status": "available",
                      "subject": {"reference": f"Patient/p{n}"},
                      "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{image.study_uid}"}]})
        lines.append({"resourceType": "DiagnosticReport", "id": f"r{n}", "status": "final",
                      "code": {"text": "XR Chest 2 Views"}, "subject": {"reference": f"Patient/p{n}"},
                      "issued": "2026-12-03T09:00:00Z", "imagingStudy": [{"reference": f"ImagingStudy/is{n}"}],
                      "presentedForm": [{"contentType": "text/plain",
                                         "data": base64.b64encode(text.encode()).decode()}]})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _study(stub, study_uid: str) -> pb.Study:
    return stub.GetStudy(pb.GetStudyRequest(study_uid=study_uid), timeout=30)


def _until(condition, seconds: float = SEARCHABLE_S, state=lambda: ""):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not seen within {seconds} s: {state()}"
        time.sleep(0.1)


def test_every_image_is_indexed_whatever_its_syntax_and_the_sr_reports_are_read(hospital):
    built = hospital["built"]
    waiting = len(hospital["studies"][-1])  # the last study's images reach the PACS later
    assert built["count"] == hospital["images"] - waiting and built["skipped"] == 0  # none skipped for its syntax
    assert hospital["images"] - waiting >= len(SYNTAXES)  # every syntax was in the PACS at the build
    assert built["reports"]["stored"] == len(SR_REPORTS) and built["reports"]["refused"] == 0


def test_reports_from_the_ris_the_ehr_and_the_pacs_reach_every_study(hospital, tmp_path):
    studies, settings = hospital["studies"], hospital["settings"]
    uid = [s[0].study_uid for s in studies]
    first = [s[0] for s in studies]
    with MllpClient(hospital["port"]) as ris:
        acks = [ris.send(oru("M2", first[2].patient_id, first[2].accession, "F", "FINDINGS:",
                             "Small left pleural effusion.", "IMPRESSION: Left effusion.")),
                ris.send(oru("M3", first[3].patient_id, first[3].accession, "F", "IMPRESSION: Right lower lobe "
                             "pneumonia.")),
                ris.send(oru("M3C", first[3].patient_id, first[3].accession, "C", "IMPRESSION: No pneumonia. "
                             "Right basilar atelectasis.")),
                ris.send(oru("M4", first[4].patient_id, first[4].accession, "F", "IMPRESSION: Cardiomegaly.")),
                ris.send(oru("M4X", first[4].patient_id, first[4].accession, "X")),
                ris.send(oru("M5", "SOMEONE-ELSE", first[5].accession, "F", "IMPRESSION: Large pneumothorax.")),
                ris.send(oru("M11", first[11].patient_id, first[11].accession, "F", "IMPRESSION: Pulmonary "
                             "edema."))]
    assert [fields(ack, "MSA")[1] for ack in acks] == ["AA", "AA", "AA", "AA", "AA", "AE", "AA"]
    assert "patient" in fields(acks[5], "MSA")[3]
    imported = subprocess.run([sys.executable, "-m", "cxr_cli", "reports", "import",
                               str(fhir_export(studies, tmp_path / "DiagnosticReport.ndjson")), "--model",
                               GATEWAY_MODEL], env={**os.environ, **to_environment(settings)}, capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0 and "4 stored (4 attached" in imported.stdout, imported.stdout + imported.stderr

    with grpc.insecure_channel(hospital["gateway"].address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        reported = (0, 1, 2, 3, 4, 7, 8, 9, 10)
        _until(lambda: all(_study(stub, uid[n]).report_status for n in reported),
               state=lambda: {n: _study(stub, uid[n]).report_status for n in reported})
        expected = {0: ("final", ["Cardiomegaly"]), 1: ("final", ["Mass"]), 2: ("final", ["Effusion"]),
                    3: ("corrected", ["Atelectasis"]), 4: ("cancelled", []), 7: ("final", ["Emphysema"]),
                    8: ("final", ["Pneumothorax"]), 9: ("final", ["Hernia"]), 10: ("final", ["No Finding"])}
        for n, (status, found) in expected.items():
            study = _study(stub, uid[n])
            assert (study.report_status, list(study.labels), study.labels_derived) == (status, found, True), n
        assert _study(stub, uid[3]).impression == "No pneumonia. Right basilar atelectasis."
        assert not (_study(stub, uid[4]).impression or _study(stub, uid[4]).findings)
        untouched = _study(stub, uid[5])  # the report naming another patient was refused
        assert (untouched.report_status, untouched.impression, untouched.labels_derived) == ("", "", False)

        hits = stub.SearchByText(pb.SearchByTextRequest(text="pneumothorax", top_k=50,
                                                        filters=pb.Filters(labels=["Pneumothorax"])), timeout=30).hits
        assert {hit.study_uid for hit in hits} == {uid[8]} and all(hit.labels_derived for hit in hits)
        assert all(hit.impression == "Pneumothorax." for hit in hits)

        with pytest.raises(grpc.RpcError) as missing:
            _study(stub, uid[11])  # not in the PACS yet: its report waits in the ledger
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        orthanc.stow(hospital["pacs"].url, hospital["files"][-len(studies[-1]):])
        with ReportLedger(settings.reports_path(GATEWAY_MODEL)) as ledger:
            assert _build(hospital["pacs"], settings, ledger)["count"] == hospital["images"]
        _until(lambda: _try_status(stub, uid[11]) == "final")
        assert list(_study(stub, uid[11]).labels) == ["Edema"]


def _try_status(stub, study_uid: str) -> str:
    try:
        return _study(stub, study_uid).report_status
    except grpc.RpcError:
        return ""
