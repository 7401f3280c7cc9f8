"""`cxr reports listen`: the command as a process (started on port 0, it prints the port it took; a message sent
there is acknowledged and in the model's ledger; SIGTERM stops it cleanly) and its refusals before it listens."""

from __future__ import annotations

import importlib.util
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cxr.reports.ledger import ReportLedger
from cxr_cli.main import main as cxr
from support.hl7_messages import MllpClient, fields, sample

ROOT = Path(__file__).resolve().parents[3]
# The labeler (cxr.reports.labeler) is written on another branch: until it is here, a stub stands in, since
# labels are not what this test is about.
CHILD = """
import importlib.util, sys, types
if importlib.util.find_spec("cxr.reports.labeler") is None:
    stub = types.ModuleType("cxr.reports.labeler")
    stub.labels = lambda text: ()
    sys.modules[stub.__name__] = stub
from cxr_cli.main import main
sys.exit(main(sys.argv[1:]))
"""
LISTENING = re.compile(r"listening for HL7 v2 ORU\^R01 over MLLP on 127\.0\.0\.1:(\d+) for (\S+), into (.+); Ctrl-C")


@pytest.fixture
def environment(tmp_path, monkeypatch):
    values = {"CXR_REPORTS_DIR": str(tmp_path / "reports"), "CXR_MODEL": "cxr-mini"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    if importlib.util.find_spec("cxr.reports.labeler") is None:
        stub = types.ModuleType("cxr.reports.labeler")
        stub.labels = lambda text: ()
        monkeypatch.setitem(sys.modules, stub.__name__, stub)
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
    process = subprocess.Popen([sys.executable, "-c", CHILD, "reports", "listen", "--port", "0"], cwd=environment,
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


def _refusal(capsys, *args) -> str:
    assert cxr(["reports", "listen", *args]) == 2
    return capsys.readouterr().err


def test_an_unknown_model_is_refused_before_a_ledger_is_made(environment, capsys):
    assert "not found" in _refusal(capsys, "--model", "no-such-model", "--port", "0")
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
