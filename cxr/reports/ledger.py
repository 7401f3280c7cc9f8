"""The report ledger: every report received for one model's index, and the identities of its studies.

One SQLite file per model (Settings.reports_path: <reports_dir>/<model>.sqlite), beside the index rather than in it, so a
rebuild keeps the reports and a report for a study not indexed yet waits here until the study is.
Writers: the intake (`cxr reports listen`, `cxr reports import`, the PACS build's SR reader) adds
reports; the gateway records the identities of the studies it serves and refuses, at attach time,
a waiting report whose patient differs. WAL mode lets those processes and the gateway's reader
work at once. Each stored report has a sequence number, so a reader asks only for what changed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cxr.reports.report import Report, ReportStatus
from cxr.store.interface import StudyIdentity

BUSY_TIMEOUT_S = 10.0  # another writer's transaction: wait for it rather than fail
SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
  key TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, accession_number TEXT NOT NULL,
  study_instance_uid TEXT NOT NULL, patient_id TEXT NOT NULL, status TEXT NOT NULL, time TEXT NOT NULL,
  findings TEXT NOT NULL, impression TEXT NOT NULL, labels TEXT NOT NULL, source TEXT NOT NULL,
  refused TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS studies (
  study_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL, accession_number TEXT NOT NULL,
  patient_id TEXT NOT NULL, PRIMARY KEY (study_uid, accession_number));
CREATE INDEX IF NOT EXISTS studies_by_accession ON studies (accession_number);
CREATE INDEX IF NOT EXISTS studies_by_instance_uid ON studies (study_instance_uid);
"""
REPORT_COLUMNS = ("accession_number", "study_instance_uid", "patient_id", "status", "time", "findings",
                  "impression", "source")


@dataclass(frozen=True)
class StoredReport:
    seq: int
    report: Report
    labels: tuple[str, ...]  # read from the text by the labeler: derived, not ground truth
    refused: str = ""  # why it was not attached to its study (a patient mismatch found on arrival of the study)


class ReportLedger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # one connection per thread: sqlite3 connections are not shared
        self._db().executescript(SCHEMA)  # executescript commits by itself

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged report survives a power cut
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def put(self, report: Report, labels: Iterable[str] = ()) -> int:
        """Store a report, replacing the study's earlier one (a correction, a cancellation); its seq."""
        with self._write() as db:
            seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM reports").fetchone()[0]
            db.execute("INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                       (report.key, seq, report.accession_number, report.study_instance_uid, report.patient_id,
                        report.status.value, report.time, report.findings, report.impression,
                        json.dumps(list(labels)), report.source))
        return seq

    def refuse(self, report: StoredReport, reason: str) -> None:
        """Mark a report as not attached, unless a newer one of its study replaced it meanwhile."""
        with self._write() as db:
            db.execute("UPDATE reports SET refused = ? WHERE key = ? AND seq = ?", (reason, report.report.key,
                                                                                  report.seq))

    def changes(self, after: int = 0, limit: int = 10_000) -> list[StoredReport]:
        """Reports stored or replaced after seq `after`, oldest first."""
        rows = self._db().execute(f"SELECT seq, {', '.join(REPORT_COLUMNS)}, labels, refused FROM reports "
                                  "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [_stored(row) for row in rows]

    def last_seq(self) -> int:
        return self._db().execute("SELECT coalesce(max(seq), 0) FROM reports").fetchone()[0]

    def set_studies(self, identities: Iterable[StudyIdentity]) -> None:
        """The studies of the index now in service, replacing those of the build before."""
        with self._write() as db:
            db.execute("DELETE FROM studies")
            db.executemany("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?)",
                           ((i.study_uid, i.study_instance_uid, i.accession_number, i.patient_id)
                            for i in identities))

    def add_studies(self, identities: Iterable[StudyIdentity]) -> int:
        """Studies a commit added to the index in service (a follower's): recorded, and the reports naming
        them stored again under new seqs, so that readers of `changes` attach the ones that waited for
        them. Returns how many reports were stored again."""
        identities = list(identities)
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?)",
                           ((i.study_uid, i.study_instance_uid, i.accession_number, i.patient_id)
                            for i in identities))
            seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM reports").fetchone()[0]
            keys = {key for i in identities for (key,) in db.execute(
                "SELECT key FROM reports WHERE refused = '' AND ((accession_number != '' AND accession_number = ?) "
                "OR (study_instance_uid != '' AND study_instance_uid IN (?, ?)))",
                (i.accession_number, i.study_instance_uid, i.study_uid))}
            for offset, key in enumerate(sorted(keys)):
                db.execute("UPDATE reports SET seq = ? WHERE key = ?", (seq + offset, key))
        return len(keys)

    def study(self, accession_number: str = "", study_instance_uid: str = "") -> StudyIdentity | None:
        """The indexed study a report names: by accession number, else by study (instance) uid."""
        db = self._db()
        found = None
        if accession_number:
            found = db.execute("SELECT * FROM studies WHERE accession_number = ? LIMIT 1",
                               (accession_number,)).fetchone()
        if found is None and study_instance_uid:
            found = db.execute("SELECT * FROM studies WHERE study_instance_uid = ? OR study_uid = ? LIMIT 1",
                               (study_instance_uid, study_instance_uid)).fetchone()
        return StudyIdentity(*found) if found else None

    def __enter__(self) -> ReportLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's connection (other threads' close with them)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _stored(row: tuple) -> StoredReport:
    seq, *fields, labels, refused = row
    values = dict(zip(REPORT_COLUMNS, fields))
    values["status"] = ReportStatus(values["status"])
    return StoredReport(seq, Report(**values), tuple(json.loads(labels)), refused)

