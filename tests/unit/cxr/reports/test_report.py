"""A Report names its study, keeps its text out of its repr, and is replaced by the next of its study;
free text splits at its FINDINGS / IMPRESSION headings, on their own lines or within one."""

import pytest

from cxr.reports.report import InvalidReportError, Report, ReportStatus, sections


def test_a_report_must_name_its_study():
    with pytest.raises(InvalidReportError, match="accession number or a study instance uid"):
        Report(findings="Clear.", patient_id="P1")
    assert Report(" ", "1.2.3").key == "study:1.2.3" and Report("A1", "1.2.3").key == "accession:A1"


def test_text_and_patient_stay_out_of_the_repr():
    report = Report("A1", patient_id="MRN-77", findings="Left effusion.", impression="Effusion.",
                    status=ReportStatus.CORRECTED)
    assert "MRN-77" not in repr(report) and "effusion" not in repr(report).lower()
    assert report.text == "Left effusion. Effusion."


@pytest.mark.parametrize("text, expected", [
    ("FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.", ("Lungs clear.", "Normal chest.")),
    ("FINDINGS: Small right effusion. IMPRESSION: Effusion.", ("Small right effusion.", "Effusion.")),
    ("Findings:\nNo pneumothorax.\n\nConclusion: no acute disease", ("No pneumothorax.", "no acute disease")),
    ("Normal chest.", ("", "Normal chest.")),
    ("EXAM: PA chest. IMPRESSION: Cardiomegaly.", ("EXAM: PA chest.", "Cardiomegaly.")),
    ("The impressionable finding:none", ("", "The impressionable finding:none")),  # words, not headings
])
def test_sections_split_at_headings_on_their_own_lines_or_within_one(text, expected):
    assert sections(text) == expected
