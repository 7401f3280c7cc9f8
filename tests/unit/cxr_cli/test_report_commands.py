"""`cxr reports import FILE` in process (cxr_cli.main.main) with settings in a temporary folder: the real
IU-Xray CSV and a FHIR NDJSON export reach the model's ledger through the intake, a patient mismatch and
invalid lines are counted, a file with nothing usable fails with a clear error; the real labeler labels
what is stored."""

import json

import pytest

from cxr.reports.ledger import ReportLedger
from cxr.store.interface import StudyIdentity
from cxr_cli.main import main
from support import DATA_DIR

MODEL = "cxr-mini"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    """Settings from the environment, in an empty working folder (no cxr.toml)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXR_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("CXR_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path / "reports" / f"{MODEL}.sqlite"


def test_the_iu_csv_is_imported_with_its_invalid_rows_counted(ledger_path, capsys):
    assert main(["reports", "import", str(DATA_DIR / "iu" / "indiana_reports.csv"), "--model", MODEL]) == 0
    out, err = capsys.readouterr()
    assert ("indiana_reports.csv: 3826 stored (0 attached to indexed studies, 3826 waiting for their study), "
            "0 refused for a patient mismatch, 25 invalid lines") in out
    assert err.count("invalid: line ") == 20 and "... and 5 more invalid lines" in err
    stored = {s.report.study_instance_uid: s for s in ReportLedger(ledger_path).changes()}
    assert len(stored) == 3826 and stored["2"].report.impression == "No acute pulmonary findings."
    assert "Normal chest" not in out + err  # no report text on the terminal


def _line(id_, accession, patient, conclusion="Small right effusion.") -> str:
    return json.dumps({"resourceType": "DiagnosticReport", "id": id_, "status": "final", "code": {"text": "XR Chest"},
                       "subject": {"identifier": {"value": patient}}, "conclusion": conclusion,
                       "identifier": [{"type": ACSN, "value": accession}]})


def test_a_fhir_export_attaches_waits_refuses_and_counts_invalid_lines(ledger_path, tmp_path, capsys):
    ReportLedger(ledger_path).set_studies([StudyIdentity("s1", "1.2.3.1", "A1", "MRN-1"),
                                           StudyIdentity("s2", "1.2.3.2", "A2", "MRN-2")])
    export = tmp_path / "DiagnosticReport.ndjson"
    export.write_text("\n".join([_line("r1", "A1", "MRN-1"), _line("r2", "A2", "MRN-1"), _line("r3", "A3", "MRN-3"),
                                 '{"resourceType": "Observation"}', "{not json"]) + "\n")
    assert main(["reports", "import", str(export), "--model", MODEL]) == 0
    out, err = capsys.readouterr()
    assert ("2 stored (1 attached to indexed studies, 1 waiting for their study), 1 refused for a patient mismatch, "
            "1 invalid lines, 1 lines skipped") in out
    assert "invalid: line 5: not JSON" in err and "MRN-" not in out + err
    stored = {s.report.accession_number: s for s in ReportLedger(ledger_path).changes()}
    assert set(stored) == {"A1", "A3"} and stored["A1"].labels == ("Effusion",)


def test_content_decides_when_the_extension_does_not(ledger_path, tmp_path, capsys):
    export = tmp_path / "reports.txt"
    export.write_text(_line("r1", "A1", "MRN-1") + "\n")
    assert main(["reports", "import", str(export), "--model", MODEL]) == 0
    assert "1 stored" in capsys.readouterr().out


@pytest.mark.parametrize("name, text, message", [
    ("empty.ndjson", '{"resourceType": "Patient", "id": "p"}\n', "no report of"),
    ("labels.csv", "path,labels\na.png,Mass\n", "lacks the columns"),
    ("missing.ndjson", None, "no such file")])
def test_a_file_with_nothing_usable_fails_with_a_clear_error(ledger_path, tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["reports", "import", str(path), "--model", MODEL]) == 2
    assert message in capsys.readouterr().err
