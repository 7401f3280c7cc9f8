"""`cxr reports import | listen`.

import, in process (cxr_cli.main.main) with settings in a temporary folder: the real IU-Xray CSV and a
FHIR NDJSON export reach the model's ledger through the intake, a patient mismatch and invalid lines are
counted, a file with nothing usable fails with a clear error; the real labeler labels what is stored.

listen, as a process (started on port 0, it prints the port it took; a message sent there is acknowledged
and in the model's ledger; SIGTERM stops it cleanly), and its refusals before it listens."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.reports.ledger import ReportLedger
from cxr.store.interface import StudyIdentity
from cxr_cli import exit_codes
from cxr_cli.main import main
from support import DATA_DIR
from support.hl7_messages import MllpClient, fields, sample

ROOT = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"listening for HL7 v2 ORU\^R01 over MLLP on 127\.0\.0\.1:(\d+) for (\S+), into (.+); Ctrl-C")

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


@pytest.mark.parametrize("name, text, message, status", [
    ("empty.ndjson", '{"resourceType": "Patient", "id": "p"}\n', "no report of", exit_codes.BAD_INPUT),
    ("labels.csv", "path,labels\na.png,Mass\n", "lacks the columns", exit_codes.BAD_INPUT),
    ("missing.ndjson", None, "no such file", exit_codes.NOT_FOUND)])
def test_a_file_with_nothing_usable_fails_with_a_clear_error(ledger_path, tmp_path, capsys, name, text, message,
                                                             status):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["reports", "import", str(path), "--model", MODEL]) == status
    assert message in capsys.readouterr().err


@pytest.fixture
def environment(tmp_path, monkeypatch):
    values = {"CXR_REPORTS_DIR": str(tmp_path / "reports"), "CXR_MODEL": "cxr-mini"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _first_line(process: subprocess.Popen, seconds: float = 60.0) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(seconds):
            process.kill()
            pytest.fail(f"no line from `cxr reports listen` in {seconds} s: {process.stderr.read()}")
    return process.stdout.readline()


def test_listen_acknowledges_stores_and_stops_on_sigterm(environment):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "cxr_cli", "reports", "listen", "--port", "0"], cwd=environment,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line(process)
        found = LISTENING.match(line)
        assert found, line
        port, model, ledger_path = int(found[1]), found[2], Path(found[3])
        assert model == "cxr-mini" and ledger_path == environment / "reports" / "cxr-mini.sqlite"
        with MllpClient(port) as client:
            reply = client.send(sample("final_gdt_zds"))
        assert fields(reply, "MSA")[1:3] == ["AA", "SYN-MSG-0001"]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped"
    assert "HL7 SYN-MSG-0001: AA" in err and "SYN-PAT" not in err and "SYN-ACC" not in err
    (stored,) = ReportLedger(ledger_path).changes()
    assert (stored.report.accession_number, stored.report.patient_id) == ("SYN-ACC-1001", "SYN-PAT-0001")


def _refusal(capsys, *args, status: int = exit_codes.BAD_INPUT) -> str:
    assert main(["reports", "listen", *args]) == status
    return capsys.readouterr().err


def test_an_unknown_model_is_refused_before_a_ledger_is_made(environment, capsys):
    assert "not found" in _refusal(capsys, "--model", "no-such-model", "--port", "0", status=exit_codes.NOT_FOUND)
    assert not (environment / "reports").exists()


def test_beyond_loopback_needs_allow_insecure(environment, capsys):
    said = _refusal(capsys, "--host", "0.0.0.0", "--port", "0")
    assert "loopback only" in said and "allow_insecure" in said


def test_an_accession_setting_that_names_no_order_field_is_refused(environment, capsys, monkeypatch):
    monkeypatch.setenv("CXR_REPORTS_ACCESSION_FIELD", "PID-3")
    assert "reports_accession_field" in _refusal(capsys, "--port", "0")


def test_a_port_in_use_is_named(environment, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = _refusal(capsys, "--port", str(port))
    assert f"127.0.0.1:{port}" in said and "--port" in said
