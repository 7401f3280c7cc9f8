"""cxr.reports.fhir: DiagnosticReport lines of a FHIR R4 Bulk Data export read into Reports: the text
of presentedForm (plain or HTML) or the conclusion, the status map, the accession identifier, the study
joined through ImagingStudy, the patient's record number; other resources skipped, invalid lines named
by number only."""

import base64
import json

import pytest

from cxr.reports.fhir import read_ndjson
from cxr.reports.report import InvalidReportError, Report, ReportStatus

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
RAD = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}]
TEXT = "FINDINGS: Heart size normal. Small left effusion.\nIMPRESSION: Small left pleural effusion."


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def diagnostic_report(id_="r1", status="final", **fields) -> dict:
    resource = {"resourceType": "DiagnosticReport", "id": id_, "status": status, "category": RAD,
                "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5",
                                     "display": "XR Chest 2 Views"}]},
                "subject": {"reference": "Patient/pat-1"}, "issued": "2024-03-05T14:30:00+01:00",
                "identifier": [{"type": ACSN, "system": "urn:oid:1.2.3.4.5", "value": f"ACC-{id_}"}]}
    return resource | fields


IMAGING_STUDY = {"resourceType": "ImagingStudy", "id": "img-1", "status": "available",
                 "subject": {"reference": "Patient/pat-1"},
                 "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
                                {"type": ACSN, "value": "ACC-FROM-STUDY"}]}
PATIENT = {"resourceType": "Patient", "id": "pat-1",
           "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "ssn-ignored"},
                          {"type": MR, "system": "urn:oid:1.2.3.4.6", "value": "MRN-0042"}]}


def _read(tmp_path, *resources) -> list:
    path = tmp_path / "export.ndjson"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in resources))
    return list(read_ndjson(path))


def _reports(tmp_path, *resources) -> list[Report]:
    return [item for _, item in _read(tmp_path, *resources) if isinstance(item, Report)]


def test_presented_form_text_is_split_into_findings_and_impression(tmp_path):
    form = [{"contentType": "text/plain; charset=utf-8", "data": _b64(TEXT)}]
    [report] = _reports(tmp_path, diagnostic_report(presentedForm=form, conclusion="ignored: the text has one"))
    assert (report.findings, report.impression) == ("Heart size normal. Small left effusion.",
                                                    "Small left pleural effusion.")
    assert (report.accession_number, report.status, report.time, report.source) == (
        "ACC-r1", ReportStatus.FINAL, "2024-03-05T14:30:00+01:00", "fhir")


def test_html_presented_form_is_stripped_of_its_tags(tmp_path):
    markup = ("<html><head><style>p {color: red}</style></head><body><p><b>FINDINGS:</b> Clear lungs &amp; "
              "normal heart.</p><p><b>IMPRESSION:</b> No acute disease.</p></body></html>")
    form = [{"contentType": "application/pdf", "data": _b64("%PDF-1.4")}, {"contentType": "text/html",
                                                                           "data": _b64(markup)}]
    [report] = _reports(tmp_path, diagnostic_report(presentedForm=form))
    assert (report.findings, report.impression) == ("Clear lungs & normal heart.", "No acute disease.")


def test_a_conclusion_alone_is_the_impression_and_effective_time_stands_in_for_issued(tmp_path):
    resource = diagnostic_report(conclusion="No acute cardiopulmonary process.",
                                 effectiveDateTime="2024-03-05T09:00:00Z")
    del resource["issued"]
    [report] = _reports(tmp_path, resource)
    assert (report.findings, report.impression) == ("", "No acute cardiopulmonary process.")
    assert report.time.startswith("2024-03-05T09:00:00")


@pytest.mark.parametrize("status, expected", [
    ("preliminary", ReportStatus.PRELIMINARY), ("partial", ReportStatus.PRELIMINARY),
    ("registered", ReportStatus.PRELIMINARY), ("final", ReportStatus.FINAL), ("amended", ReportStatus.CORRECTED),
    ("corrected", ReportStatus.CORRECTED), ("appended", ReportStatus.CORRECTED),
    ("cancelled", ReportStatus.CANCELLED), ("entered-in-error", ReportStatus.CANCELLED)])
def test_statuses_map_to_the_ledger_s(tmp_path, status, expected):
    [report] = _reports(tmp_path, diagnostic_report(status=status, conclusion="Text."))
    assert report.status is expected


def test_a_cancelled_report_needs_no_text(tmp_path):
    [report] = _reports(tmp_path, diagnostic_report(status="cancelled"))
    assert report.status is ReportStatus.CANCELLED and report.text == ""


def test_the_study_uid_accession_and_patient_come_from_the_imaging_study_and_patient_lines(tmp_path):
    resource = diagnostic_report(conclusion="Normal.", imagingStudy=[{"reference": "ImagingStudy/img-1"}])
    del resource["identifier"]
    [report] = _reports(tmp_path, resource, IMAGING_STUDY, PATIENT)  # joined lines may come after the report
    assert (report.study_instance_uid, report.accession_number, report.patient_id) == (
        STUDY_UID, "ACC-FROM-STUDY", "MRN-0042")


def test_contained_resources_and_reference_identifiers_are_joined_too(tmp_path):
    contained = [dict(IMAGING_STUDY, id="s"), dict(PATIENT, id="p")]
    resource = diagnostic_report(conclusion="Normal.", contained=contained, subject={"reference": "#p"},
                                 imagingStudy=[{"reference": "#s"}])
    by_identifier = diagnostic_report(
        "r2", conclusion="Normal.", subject={"identifier": {"type": MR, "value": "MRN-7"}},
        imagingStudy=[{"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.9"}}])
    first, second = _reports(tmp_path, resource, by_identifier)
    assert (first.study_instance_uid, first.patient_id) == (STUDY_UID, "MRN-0042")
    assert (second.study_instance_uid, second.patient_id, second.accession_number) == ("1.2.3.9", "MRN-7", "ACC-r2")


def test_the_logical_patient_id_stands_in_only_when_no_record_number_is_known(tmp_path):
    [report] = _reports(tmp_path, diagnostic_report(conclusion="Normal."))
    assert report.patient_id == "pat-1"


def test_an_accession_named_by_system_or_on_the_order_is_found(tmp_path):
    by_system = diagnostic_report("a", conclusion="x", identifier=[
        {"system": "urn:id:report", "value": "R-1"}, {"system": "http://hospital.example/accession", "value": "A-9"}])
    on_order = diagnostic_report("b", conclusion="x", identifier=[],
                                 basedOn=[{"reference": "ServiceRequest/o1", "identifier": {"type": ACSN,
                                                                                           "value": "A-10"}}])
    assert [r.accession_number for r in _reports(tmp_path, by_system, on_order)] == ["A-9", "A-10"]


def test_other_resources_and_laboratory_reports_are_skipped_and_joined_resources_not_listed(tmp_path):
    lab = diagnostic_report("lab", conclusion="Hb 13.2 g/dL", category=[{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}])
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}
    read = _read(tmp_path, lab, observation, IMAGING_STUDY, diagnostic_report(conclusion="Normal."))
    assert [(number, type(item).__name__) for number, item in read] == [(1, "NoneType"), (2, "NoneType"),
                                                                         (4, "Report")]  # 3: joined, not skipped


def test_invalid_lines_are_named_by_number_without_their_content(tmp_path):
    no_code = diagnostic_report("nc", conclusion="SECRET-1")
    del no_code["code"]
    url_only = diagnostic_report("u", presentedForm=[{"contentType": "text/plain", "url": "https://ehr/r/1"}])
    nameless = diagnostic_report("n", conclusion="SECRET-2", identifier=[])
    unknown = diagnostic_report("x", status="unknown", conclusion="SECRET-3")
    lines = ['{"resourceType": "DiagnosticReport", "conclusion": "SECRET-0"', no_code, url_only, nameless,
             unknown, "", diagnostic_report(conclusion="Fine.")]
    read = _read(tmp_path, *lines)
    errors = {number: str(item) for number, item in read if isinstance(item, InvalidReportError)}
    assert sorted(errors) == [1, 2, 3, 4, 5] and isinstance(read[-1][1], Report) and read[-1][0] == 7
    assert "not JSON" in errors[1] and "code" in errors[2] and "url" in errors[3]
    assert "names no study" in errors[4] and "status 'unknown'" in errors[5]
    assert not any("SECRET" in e for e in errors.values())
