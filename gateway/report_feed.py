"""Reports received after an index was built (cxr.reports), shown in its hits within a second or so.

A thread looks at each model's report ledger every `reports_poll_s`. When a new build of the index is
in service, it records the build's studies in the ledger (the intake checks patients against them)
and applies every report there; otherwise only the reports stored since its last look. A report is
attached to its study's rows when the study is indexed and names the same patient; one naming another
patient is marked refused in the ledger and logged without identities; one for a study not indexed
yet waits for a build that has it. Nothing is written into the index files: a store keeps the reports
beside its rows (cxr.store.interface.VectorStore.apply_reports).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cxr.errors import CxrError
from cxr.reports.intake import patient_differs
from cxr.reports.ledger import ReportLedger, StoredReport
from cxr.reports.report import ReportStatus
from cxr.store.interface import StudyReport, VectorStore
from gateway.indexes import IndexSet

log = logging.getLogger("cxr.gateway.reports")
PATIENT_MISMATCH = "the report's patient id differs from the study's PatientID"


def study_report(stored: StoredReport) -> StudyReport:
    report = stored.report
    if report.status is ReportStatus.CANCELLED:
        return StudyReport(status=report.status.value, time=report.time)
    return StudyReport(report.findings, report.impression, stored.labels, report.status.value, report.time)


class ReportFeed:
    def __init__(self, ledger_paths: dict[str, Path], poll_s: float = 1.0, indexes: IndexSet | None = None):
        """`ledger_paths`: each served model's ledger (Settings.reports_path); one that does not exist
        yet is looked for again at every poll (the gateway creates none). `indexes`: what `poll` looks
        at, else those `start` is given."""
        self.indexes = indexes
        self.ledger_paths = ledger_paths
        self.poll_s = poll_s
        self._ledgers: dict[str, ReportLedger] = {}
        self._applied: dict[str, tuple[VectorStore, int]] = {}  # model -> (store, last seq applied to it)
        self._lock = threading.Lock()  # the poll and a build being prepared may catch up at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="report-feed", daemon=True)

    def prepare(self, model: str, store: VectorStore) -> None:
        """A build about to be served gets the ledger's reports first (IndexSet's `prepare`)."""
        path = self.ledger_paths.get(model)
        ledger = self._ledger(model, path) if path else None
        if ledger is not None:
            self._catch_up(model, ledger, store)

    def start(self, indexes: IndexSet) -> None:
        """Look for new reports for the indexes in service every poll_s."""
        self.indexes = indexes
        for model, path in self.ledger_paths.items():
            if not path.is_file():  # said once: hits without reports are otherwise a silent mystery
                log.info("no report ledger for %s at %s yet: its hits carry no reports until the intake (cxr reports "
                         "listen or import, a PACS build) writes one there (reports_dir)", model, path)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a ledger that cannot be read now may be readable at the next look
                log.exception("could not apply new reports; trying again in %.1f s", self.poll_s)
            if self._stop.wait(self.poll_s):
                break
        for ledger in self._ledgers.values():
            ledger.close()  # this thread's connections (sqlite3 connections belong to their thread)

    def poll(self) -> None:
        """Apply what is new in every model's ledger to its index in service."""
        for model, path in self.ledger_paths.items():
            ledger = self._ledger(model, path)
            if ledger is None:
                continue
            try:
                store = self.indexes.index(model).store
            except CxrError:
                continue  # no index in service for this model
            self._catch_up(model, ledger, store)

    def _ledger(self, model: str, path: Path) -> ReportLedger | None:
        with self._lock:
            if model not in self._ledgers and path.is_file():
                self._ledgers[model] = ReportLedger(path)
            return self._ledgers.get(model)

    def _catch_up(self, model: str, ledger: ReportLedger, store: VectorStore) -> None:
        with self._lock:
            known_store, after = self._applied.get(model, (None, 0))
            if known_store is not store:
                ledger.set_studies(store.studies())
                after = 0
            while changes := ledger.changes(after):
                store.apply_reports(self._attachable(ledger, changes))
                after = changes[-1].seq
            self._applied[model] = (store, after)

    @staticmethod
    def _attachable(ledger: ReportLedger, changes: list[StoredReport]) -> dict[str, StudyReport]:
        """The reports among `changes` to show, by the study_uid of their rows (later ones win)."""
        attach: dict[str, StudyReport] = {}
        for stored in changes:
            report = stored.report
            identity = ledger.study(report.accession_number, report.study_instance_uid)
            if identity is None or stored.refused:
                continue
            if patient_differs(report.patient_id, identity):
                log.warning("refused a %s report on its study's arrival: %s (ledger seq %d)", report.source,
                            PATIENT_MISMATCH, stored.seq)
                ledger.refuse(stored, PATIENT_MISMATCH)
                continue
            attach[identity.study_uid] = study_report(stored)
        return attach

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(5.0, self.poll_s * 2))
