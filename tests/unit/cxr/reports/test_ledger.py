"""The ledger: a study's later report replaces the earlier one with a new sequence number, readers ask
for what changed since, a refusal marks only the report it was made for, the studies of the index in
service are replaced whole, and a second process sees what the first wrote."""

import subprocess
import sys

from cxr.reports.ledger import ReportLedger, StudyIdentity
from cxr.reports.report import Report, ReportStatus


def test_a_later_report_of_the_study_replaces_the_earlier_with_a_new_seq(tmp_path):
    with ReportLedger(tmp_path / "m.sqlite") as ledger:
        assert ledger.put(Report("A1", findings="first"), ["Mass"]) == 1
        assert ledger.put(Report("A2", findings="other")) == 2
        assert ledger.put(Report("A1", impression="second", status=ReportStatus.CORRECTED)) == 3
        changed = ledger.changes()
        assert [(c.seq, c.report.accession_number) for c in changed] == [(2, "A2"), (3, "A1")]
        assert (changed[1].report.impression, changed[1].report.findings, changed[1].labels) == ("second", "", ())
        assert [c.seq for c in ledger.changes(after=2)] == [3] and ledger.last_seq() == 3


def test_a_refusal_marks_the_report_it_was_made_for_only(tmp_path):
    with ReportLedger(tmp_path / "m.sqlite") as ledger:
        ledger.put(Report("A1", patient_id="P9", findings="wrong patient"))
        stale = ledger.changes()[0]
        ledger.put(Report("A1", patient_id="P1", findings="right patient"))
        ledger.refuse(stale, "patient differs")  # a newer report replaced it meanwhile: nothing to mark
        assert ledger.changes()[0].refused == ""
        ledger.refuse(ledger.changes()[0], "patient differs")
        assert ledger.changes()[0].refused == "patient differs"
        ledger.put(Report("A1", patient_id="P1", findings="resent"))
        assert ledger.changes()[0].refused == ""  # a new report is judged anew


def test_studies_are_found_by_accession_or_uid_and_replaced_whole(tmp_path):
    with ReportLedger(tmp_path / "m.sqlite") as ledger:
        ledger.set_studies([StudyIdentity("s1", "1.2.1", "A1", "P1"), StudyIdentity("s1", "1.2.1", "A1b", "P1"),
                            StudyIdentity("iu-7", "", "", "")])
        assert {ledger.study(name).study_uid for name in ("A1", "A1b")} == {"s1"}  # a merged study's accessions
        assert ledger.study(study_instance_uid="1.2.1").patient_id == "P1"
        assert ledger.study(study_instance_uid="iu-7").study_uid == "iu-7"  # an archive's own study uid
        assert ledger.study("nope") is None and ledger.study() is None
        ledger.set_studies([StudyIdentity("s2", "1.2.2", "A2", "P2")])
        assert ledger.study("A1") is None and ledger.study("A2").patient_id == "P2"


def test_studies_a_commit_adds_bring_back_the_reports_waiting_for_them(tmp_path):
    with ReportLedger(tmp_path / "m.sqlite") as ledger:
        ledger.set_studies([StudyIdentity("s1", "1.2.1", "A1", "P1")])
        ledger.put(Report("A1", findings="indexed"))
        ledger.put(Report("A2", findings="waits for its study"))
        ledger.put(Report("", study_instance_uid="1.2.3", findings="waits too"))
        refused = ledger.put(Report("A4", findings="refused"))
        ledger.refuse(ledger.changes(after=refused - 1)[0], "patient differs")
        seen = ledger.last_seq()
        added = [StudyIdentity("s2", "1.2.2", "A2", "P2"), StudyIdentity("s3", "1.2.3", "", "P3"),
                 StudyIdentity("s4", "1.2.4", "A4", "P4")]
        assert ledger.add_studies(added) == 2
        assert sorted(c.report.findings for c in ledger.changes(after=seen)) == ["waits for its study", "waits too"]
        assert ledger.study("A2").study_uid == "s2" and ledger.study("A1").study_uid == "s1"  # added, not replaced


def test_another_process_reads_what_was_written(tmp_path):
    path = tmp_path / "m.sqlite"
    with ReportLedger(path) as ledger:
        ledger.put(Report("A1", findings="seen elsewhere"))
    child = ("import sys; from pathlib import Path; from cxr.reports.ledger import ReportLedger; "
             "print(ReportLedger(Path(sys.argv[1])).changes()[0].report.findings)")
    assert subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip() == "seen elsewhere"
