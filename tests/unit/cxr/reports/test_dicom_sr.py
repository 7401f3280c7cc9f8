"""cxr.reports.dicom_sr: text reports read from the three SR classes PACSs store them as; dose reports
and images are no report; status, time and accession from the SR document's header."""

import pytest
from pydicom import Dataset, Sequence
from pydicom.uid import generate_uid

from cxr.reports.dicom_sr import report_from_sr
from cxr.reports.report import InvalidReportError, ReportStatus
from support import sr

FINDINGS = "Heart size is normal. Small left pleural effusion."
IMPRESSION = "Small left effusion. No pneumothorax."


@pytest.mark.parametrize("sop_class", [sr.BASIC_TEXT, sr.ENHANCED, sr.COMPREHENSIVE])
def test_a_tid_2000_report_of_each_class_gives_its_findings_impression_and_identity(sop_class):
    study = generate_uid()
    report = report_from_sr(sr.text_report(sop_class, study, "P-17", FINDINGS, IMPRESSION, accession="A100"))
    assert (report.findings, report.impression) == (FINDINGS, IMPRESSION)
    assert (report.accession_number, report.study_instance_uid, report.patient_id) == ("A100", study, "P-17")
    assert (report.status, report.time, report.source) == (ReportStatus.FINAL, "2024-01-02T13:45:10", "sr")
    assert "Dr^Reader" not in report.text  # the observer is context, not text


def test_loinc_text_items_without_containers_and_several_findings_are_joined():
    content = [sr.text(sr.LN_FINDINGS, "Lungs are clear."), sr.text(sr.LN_FINDINGS, "No effusion."),
               sr.text(sr.LN_IMPRESSION, "Normal chest.")]
    report = report_from_sr(sr.document(sr.ENHANCED, sr.REPORT_TITLE, content, generate_uid(), "P-1"))
    assert (report.findings, report.impression) == ("Lungs are clear.\nNo effusion.", "Normal chest.")


def test_headings_of_a_local_coding_scheme_are_known_by_their_meaning():
    content = [sr.container(("F1", "99RIS", "Findings"), sr.text(("T1", "99RIS", "Text"), "Clear lungs.")),
               sr.text(("C1", "99RIS", "Conclusion"), "No acute disease.")]
    report = report_from_sr(sr.document(sr.COMPREHENSIVE, sr.REPORT_TITLE, content, generate_uid(), "P-1"))
    assert (report.findings, report.impression) == ("Clear lungs.", "No acute disease.")


def test_an_unnamed_free_text_report_is_split_by_its_headings():
    content = [sr.text(("R1", "99RIS", "Report Text"), "FINDINGS: Clear lungs.\nIMPRESSION: Normal.")]
    report = report_from_sr(sr.document(sr.BASIC_TEXT, sr.REPORT_TITLE, content, generate_uid(), "P-1"))
    assert (report.findings, report.impression) == ("Clear lungs.", "Normal.")


def test_text_in_observation_context_is_not_report_text():
    device = sr.text(("121012", "DCM", "Device Observer Name"), "CR-ROOM-3", relationship="HAS OBS CONTEXT")
    content = [device, sr.text(sr.IMPRESSION, "Normal.")]
    report = report_from_sr(sr.document(sr.BASIC_TEXT, sr.REPORT_TITLE, content, generate_uid(), "P-1"))
    assert (report.findings, report.impression) == ("", "Normal.")


@pytest.mark.parametrize("verified, complete", [(False, True), (True, False), (False, False)])
def test_an_unverified_or_partial_report_is_preliminary(verified, complete):
    ds = sr.text_report(sr.BASIC_TEXT, generate_uid(), "P-1", FINDINGS, IMPRESSION, verified=verified,
                        complete=complete)
    assert report_from_sr(ds).status is ReportStatus.PRELIMINARY


def test_the_preliminary_flag_and_a_predecessor_document_set_the_status():
    ds = sr.text_report(sr.COMPREHENSIVE, generate_uid(), "P-1", FINDINGS, IMPRESSION)
    ds.PreliminaryFlag = "PRELIMINARY"
    assert report_from_sr(ds).status is ReportStatus.PRELIMINARY
    ds.PreliminaryFlag = "FINAL"
    ds.PredecessorDocumentsSequence = Sequence([Dataset()])
    assert report_from_sr(ds).status is ReportStatus.CORRECTED


def test_the_accession_comes_from_the_referenced_request_when_the_header_has_none():
    ds = sr.text_report(sr.ENHANCED, generate_uid(), "P-1", FINDINGS, IMPRESSION)
    request = Dataset()
    request.AccessionNumber, request.StudyInstanceUID = "RQ-9", ds.StudyInstanceUID
    ds.ReferencedRequestSequence = Sequence([request])
    assert report_from_sr(ds).accession_number == "RQ-9"


@pytest.mark.parametrize("date, time, expected", [
    ("20240102", "0905", "2024-01-02T09:05:00"), ("20240102", "090512.250", "2024-01-02T09:05:12.250"),
    ("20240102", "", "2024-01-02"), ("", "090512", "")])
def test_content_date_and_time_become_iso_8601(date, time, expected):
    ds = sr.text_report(sr.BASIC_TEXT, generate_uid(), "P-1", FINDINGS, IMPRESSION, content_date=date,
                        content_time=time)
    assert report_from_sr(ds).time == expected


@pytest.mark.parametrize("sop_class", [sr.DOSE_SR, sr.COMPREHENSIVE])
def test_a_radiation_dose_report_is_no_report(sop_class):
    assert report_from_sr(sr.dose_report(generate_uid(), "P-1", sop_class)) is None


def test_an_image_and_an_sr_without_text_are_no_report():
    image = Dataset()
    image.SOPClassUID, image.StudyInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    assert report_from_sr(image) is None
    assert report_from_sr(sr.document(sr.BASIC_TEXT, sr.REPORT_TITLE, [], generate_uid(), "P-1")) is None


def test_a_report_naming_no_study_is_invalid():
    ds = sr.text_report(sr.BASIC_TEXT, "", "P-1", FINDINGS, IMPRESSION)
    with pytest.raises(InvalidReportError, match="names no study"):
        report_from_sr(ds)
