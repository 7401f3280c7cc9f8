"""The intake: a report naming another patient's indexed study is refused and stored nowhere; one for an
indexed study is attached, one for a study not indexed waits; cancellations carry no labels."""

import logging

import pytest

from cxr.reports.intake import PatientMismatchError, ReportIntake, patient_differs
from cxr.reports.ledger import ReportLedger, StudyIdentity
from cxr.reports.report import Report, ReportStatus


@pytest.fixture
def intake(tmp_path):
    ledger = ReportLedger(tmp_path / "m.sqlite")
    ledger.set_studies([StudyIdentity("s1", "1.2.1", "A1", "MRN-1"), StudyIdentity("iu-2", "", "", "iu-2")])
    yield ReportIntake(ledger, lambda text: ("Effusion",) if "effusion" in text else ())
    ledger.close()


def test_a_report_for_another_patient_is_refused_and_logged_without_identities(intake, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(PatientMismatchError, match="differs from the PatientID"):
        intake.accept(Report("A1", patient_id="MRN-2", findings="Left effusion.", source="hl7"))
    assert intake.ledger.last_seq() == 0
    assert "MRN" not in caplog.text and "A1" not in caplog.text and "1.2.1" not in caplog.text


def test_attached_waiting_and_labelled(intake):
    attached = intake.accept(Report("A1", patient_id="MRN-1", findings="Left effusion."))
    waiting = intake.accept(Report("A9", patient_id="MRN-9", findings="Left effusion."))
    assert (attached.attached, waiting.attached) == (True, False)
    assert [c.labels for c in intake.ledger.changes()] == [("Effusion",), ("Effusion",)]
    intake.accept(Report("A1", patient_id="MRN-1", status=ReportStatus.CANCELLED, findings="effusion"))
    assert intake.ledger.changes(after=2)[0].labels == ()


def test_patients_compare_only_where_both_sides_name_one():
    study = StudyIdentity("s1", "1.2.1", "A1", "MRN-1")
    assert patient_differs("MRN-2", study) and not patient_differs(" MRN-1 ", study)
    assert not patient_differs("", study)  # the report names none: nothing to compare
    assert not patient_differs("MRN-2", StudyIdentity("iu-2", "", "", "iu-2"))  # the study uid stands in
    assert not patient_differs("MRN-2", StudyIdentity("s3", "", "A3", ""))
