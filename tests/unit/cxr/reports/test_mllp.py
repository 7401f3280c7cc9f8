"""The MLLP listener over real loopback connections: the listener runs on its own event loop in a thread, on a port
the kernel picks, and a blocking client sends framed ORU^R01 samples and reads the ACKs; the ledger is read back.

Each bad sender (garbage, another message type, an oversized frame, a patient mismatch) gets its answer and the
listener still answers the next good message; the log names control ids and outcomes, never patient data."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from cxr.reports.intake import ReportIntake
from cxr.reports.ledger import ReportLedger, StudyIdentity
from cxr.reports.mllp import Limits, MllpListener
from cxr.reports.report import ReportStatus
from support.hl7_messages import CR, FS, VT, MllpClient, fields, frame, sample, with_field

STUDY = StudyIdentity("study-1", "1.2.826.0.1.3680043.8.498.10001", "SYN-ACC-1001", "SYN-PAT-0001")
PATIENT_DATA = ("SYN-PAT", "SYNTHETIC", "TESTPATIENT", "SYN-ACC", "pleural", "1.2.826.0.1.3680043.8.498")


class Running:
    """A listener started on 127.0.0.1:0 on an event loop of its own thread."""

    def __init__(self, listener: MllpListener):
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _, self.port = self._run(listener.start("127.0.0.1", 0))

    def _run(self, coroutine, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def client(self) -> MllpClient:
        return MllpClient(self.port)

    def stop(self) -> None:
        self._run(self.listener.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def ledger(tmp_path):
    ledger = ReportLedger(tmp_path / "cxr-mini.sqlite")
    yield ledger
    ledger.close()


@pytest.fixture
def start(ledger):
    running = []

    def start(limits: Limits = Limits(), accession_field: str = "OBR-3", label=lambda text: ("effusion",)) -> Running:
        running.append(Running(MllpListener(ReportIntake(ledger, label), accession_field, limits)))
        return running[-1]

    yield start
    for listener in running:
        listener.stop()


def _ack_code(reply: str) -> str:
    return fields(reply, "MSA")[1]


def test_a_good_report_is_acknowledged_and_stored(start, ledger):
    with start().client() as client:
        reply = client.send(sample("final_gdt_zds"))
    assert fields(reply, "MSA")[:3] == ["MSA", "AA", "SYN-MSG-0001"]
    (stored,) = ledger.changes()
    assert stored.report.accession_number == "SYN-ACC-1001" and stored.report.status is ReportStatus.FINAL
    assert stored.report.impression == "Small right pleural effusion \u2014 follow-up suggested."
    assert stored.labels == ("effusion",)  # labelled by the intake's labeler


def test_several_messages_on_one_connection_and_several_connections(start, ledger):
    running = start()
    with running.client() as one, running.client() as two:
        assert _ack_code(one.send(sample("final_gdt_zds"))) == "AA"
        assert _ack_code(two.send(sample("two_orders"))) == "AA"
        assert _ack_code(one.send(sample("preliminary_ft_sections"))) == "AA"
    assert sorted(s.report.accession_number for s in ledger.changes()) == [
        "SYN-ACC-1001", "SYN-ACC-2002", "SYN-ACC-3001", "SYN-ACC-3002"]


def test_a_patient_mismatch_is_ae_and_leaves_the_study_report_as_it_was(start, ledger):
    ledger.set_studies([STUDY])
    with start().client() as client:
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"
        (before,) = ledger.changes()
        other_patient = with_field(with_field(sample("final_gdt_zds"), "PID", 3, "SYN-PAT-9999^^^SYNTH^MR"),
                                   "OBX", 5, "FINDINGS: another patient's lungs.")
        reply = client.send(other_patient)
        assert fields(reply, "MSA")[1:3] == ["AE", "SYN-MSG-0001"]
        assert "patient id differs" in fields(reply, "MSA")[3] and fields(reply, "ERR")[3].startswith("207^")
        assert not [d for d in PATIENT_DATA if d in fields(reply, "MSA")[3]]
        assert _ack_code(client.send(sample("two_orders"))) == "AA"  # and it goes on
    assert [s for s in ledger.changes() if s.report.accession_number == "SYN-ACC-1001"] == [before]


def test_a_corrected_report_replaces_the_text_and_a_cancelled_one_removes_it(start, ledger):
    corrected = with_field(with_field(sample("final_gdt_zds"), "OBR", 25, "C"), "OBX", 5,
                           "IMPRESSION: Corrected: no effusion.", occurrence=5)
    cancelled = with_field(sample("final_gdt_zds"), "OBR", 25, "X")
    with start().client() as client:
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"
        assert _ack_code(client.send(corrected)) == "AA"
        (stored,) = [s for s in ledger.changes() if s.report.accession_number == "SYN-ACC-1001"]
        assert stored.report.status is ReportStatus.CORRECTED
        assert stored.report.impression == "Corrected: no effusion."
        assert _ack_code(client.send(cancelled)) == "AA"
    (stored,) = [s for s in ledger.changes() if s.report.accession_number == "SYN-ACC-1001"]
    assert stored.report.status is ReportStatus.CANCELLED
    assert (stored.report.findings, stored.report.impression, stored.labels) == ("", "", ())


def test_garbage_is_ar_and_the_connection_reads_on(start, ledger):
    with start().client() as client:
        reply = client.send(b"this is not HL7")
        assert fields(reply, "MSA")[1:3] == ["AR", ""] and fields(reply, "ERR")[3].startswith("100^")
        client.send_raw(b"no start block" + FS + CR)  # a frame without <VT>
        reply = client.read()
        assert _ack_code(reply) == "AR" and "<VT>" in fields(reply, "MSA")[3]
        assert _ack_code(client.send(b"MSH|^~\\&|A\xff\xfe|B\rPID|\x00")) == "AR"
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"
    assert len(ledger.changes()) == 1


@pytest.mark.parametrize("field, value, code, condition", [
    (9, "ADT^A01", "AR", "200^"), (12, "3.0", "AR", "203^"), (18, "EBCDIC", "AR", "103^")])
def test_other_message_types_and_versions_are_rejected(start, ledger, field, value, code, condition):
    with start().client() as client:
        reply = client.send(with_field(sample("final_gdt_zds"), "MSH", field, value))
        assert fields(reply, "MSA")[1:3] == [code, "SYN-MSG-0001"]
        assert fields(reply, "ERR")[3].startswith(condition)
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"


def test_a_field_error_is_ae_naming_the_field(start, ledger):
    with start().client() as client:
        reply = client.send(with_field(sample("final_gdt_zds"), "OBR", 25, "R"))
        assert _ack_code(reply) == "AE" and "OBR-25" in fields(reply, "MSA")[3]
        assert fields(reply, "ERR")[2] == "OBR^1^25"
    assert ledger.changes() == []


def test_the_accession_field_setting_is_used(start, ledger):
    with start(accession_field="OBR-18").client() as client:
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"
    assert ledger.changes()[0].report.accession_number == "SYN-OBR18-1001"


def test_an_oversized_frame_is_refused_before_its_end_and_the_connection_closed(start, ledger):
    running = start(Limits(max_message_bytes=64 * 1024))
    with running.client() as client:
        client.send_raw(VT + b"MSH|^~\\&|" + b"A" * (200 * 1024))  # no <FS><CR>: refused without waiting for it
        reply = client.read()
        assert _ack_code(reply) == "AR" and "longer than 65536 bytes" in fields(reply, "MSA")[3]
        assert client.closed_by_peer()
    with running.client() as client:
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"


def test_the_default_limit_is_one_mebibyte(start, ledger):
    running = start()
    big = sample("final_gdt_zds").replace("Heart size normal.", "Heart size normal. " + "x" * (900 * 1024))
    with running.client() as client:
        assert _ack_code(client.send(big)) == "AA"  # under 1 MiB
        client.send_raw(VT + b"A" * (1100 * 1024) + FS + CR)
        assert "longer than 1048576 bytes" in fields(client.read(), "MSA")[3]


def test_a_silent_connection_is_closed(start):
    running = start(Limits(read_timeout_s=0.3))
    with running.client() as client:
        started = time.monotonic()
        assert client.closed_by_peer()
        assert time.monotonic() - started < 5
    with running.client() as client:
        assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"


def test_connections_past_the_most_are_closed_at_once(start):
    running = start(Limits(max_connections=2))
    one, two = running.client(), running.client()
    assert _ack_code(one.send(sample("final_gdt_zds"))) == "AA"
    assert _ack_code(two.send(sample("final_gdt_zds"))) == "AA"
    with running.client() as third:
        assert third.closed_by_peer()
    one.close()
    assert _ack_code(_send_when_admitted(running, sample("final_gdt_zds"))) == "AA"  # once the listener saw it go
    two.close()


def _send_when_admitted(running: Running, message: str, seconds: float = 5.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with running.client() as client:
                reply = client.send(message)
        except ConnectionError:
            reply = ""
        if reply or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_stop_closes_idle_connections_and_the_port(start):
    running = start()
    client = running.client()
    assert _ack_code(client.send(sample("final_gdt_zds"))) == "AA"
    running._run(running.listener.stop())
    assert client.closed_by_peer()
    client.close()
    with pytest.raises(OSError):
        MllpClient(running.port, timeout=2)


def test_stop_answers_the_message_in_hand_first(start, ledger):
    labelling = threading.Event()

    def slow_label(text: str) -> tuple[str, ...]:
        labelling.set()
        time.sleep(0.5)
        return ()

    running = start(label=slow_label)
    with running.client() as client:
        client.send_raw(frame(sample("final_gdt_zds")))
        assert labelling.wait(10)
        stopping = asyncio.run_coroutine_threadsafe(running.listener.stop(), running.loop)
        assert _ack_code(client.read()) == "AA"
        stopping.result(30)
        assert client.closed_by_peer()
    assert len(ledger.changes()) == 1


def test_the_log_names_control_ids_and_outcomes_never_patient_data(start, ledger, caplog):
    ledger.set_studies([STUDY])
    mismatch = with_field(sample("final_gdt_zds"), "PID", 3, "SYN-PAT-9999")
    with caplog.at_level(logging.DEBUG), start().client() as client:
        for message in (sample("final_gdt_zds"), mismatch, with_field(sample("final_gdt_zds"), "OBR", 25, "Q"),
                        b"garbage SYN-PAT-0001", sample("two_orders")):
            client.send(message)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("cxr.reports")]
    assert any("SYN-MSG-0001: AA" in line for line in lines) and any("SYN-MSG-0001: AE" in line for line in lines)
    assert any("-: AR" in line for line in lines) and any("SYN-MSG-0003: AA (2 reports" in line for line in lines)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert not [d for d in PATIENT_DATA if d in everything], everything
