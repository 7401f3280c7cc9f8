"""The radiology reports a PACS keeps beside the images as DICOM SR, read into the model's report
ledger by `cxr index build --dicomweb` and `cxr index follow`.

For each study indexed, its SR series are listed (QIDO-RS Modality=SR, whatever the build's modality
filter), each SR not read before is fetched (WADO-RS), read by cxr.reports.dicom_sr and handed to
the report intake, which refuses a report naming another patient's study. The SOPInstanceUIDs read
are kept in the build's cache (reports_read.txt), so a rebuild fetches only new SR; one that could
not be fetched is tried again by the next build. Sending SR objects to the image encoder is not
this module's business: the image pipeline skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from tqdm import tqdm

from cxr.dicomweb import DicomWeb, Instance, InstanceFetchError
from cxr.reports.dicom_sr import report_from_sr
from cxr.reports.intake import PatientMismatchError, ReportIntake
from cxr.reports.report import InvalidReportError, Report, ReportStatus

READ_FILE = "reports_read.txt"
FETCH_THREADS = 4  # WADO-RS requests in flight: SR objects are small, the round trips are the cost
# Within a study, the newest report is stored last, so it is the one the ledger keeps.
_STATUS_ORDER = {ReportStatus.PRELIMINARY: 0, ReportStatus.FINAL: 1, ReportStatus.CORRECTED: 2,
                 ReportStatus.CANCELLED: 3}
INVALID, FAILED = "invalid", "failed"


@dataclass
class ReportCounts:
    """One pass over the SR of the indexed studies."""
    stored: int = 0
    attached: int = 0  # of those stored, to a study the gateway serves (the others wait for it)
    refused: int = 0  # a patient id that differs from the indexed study's
    invalid: int = 0  # an SR report naming no study
    other: int = 0  # SR that are no text report: dose, measurements, CAD
    failed: int = 0  # could not be fetched: tried again next time

    def __str__(self) -> str:
        parts = [f"{self.stored} reports from SR ({self.attached} attached to indexed studies)"]
        parts += [f"{self.refused} refused for a patient mismatch"] if self.refused else []
        parts += [f"{self.invalid} naming no study"] if self.invalid else []
        parts += [f"{self.failed} could not be fetched (tried again next time)"] if self.failed else []
        return ", ".join(parts)

    def __bool__(self) -> bool:
        return any(vars(self).values())


class ReportReader:
    """Reads the SR objects of a PACS's studies into a report intake, each SR once."""

    def __init__(self, pacs: DicomWeb, cache_directory: Path, intake: Callable[[], ReportIntake],
                 progress: bool = False):
        """`intake` opens the intake (and its ledger): called when the first report is found."""
        self.pacs, self.progress = pacs, progress
        self.path = cache_directory / READ_FILE
        self.read = set(self.path.read_text().split()) if self.path.is_file() else set()
        self._open_intake, self._intake = intake, None

    def read_studies(self, studies: Iterable[str]) -> ReportCounts:
        """Store the reports of the SR in `studies` not read before."""
        counts = ReportCounts()
        todo = [i for i in self.pacs.report_instances(dict.fromkeys(studies)) if i.sop_uid not in self.read]
        if not todo:
            return counts
        bar = tqdm(total=len(todo), unit="SR", desc="reading reports from the PACS", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="wado-sr") as fetchers:
                for _, study in groupby(fetchers.map(self._fetch, todo), key=lambda found: found[0].study_uid):
                    study = list(study)
                    self._store(study, counts)
                    bar.update(len(study))
        finally:
            bar.close()
        return counts

    def _fetch(self, instance: Instance) -> tuple[Instance, Report | str | None]:
        """(instance, its report, None when it holds none, or INVALID / FAILED)."""
        try:
            return instance, report_from_sr(self.pacs.dataset(instance))
        except InvalidReportError:
            return instance, INVALID
        except InstanceFetchError:
            return instance, FAILED

    def _store(self, study: list[tuple[Instance, Report | str | None]], counts: ReportCounts) -> None:
        """One study's SR: its reports oldest first, then marked read (all but those not fetched)."""
        reports = [r for _, r in study if isinstance(r, Report)]
        for report in sorted(reports, key=lambda r: (r.time, _STATUS_ORDER[r.status])):
            try:
                counts.attached += self._accept(report)
                counts.stored += 1
            except PatientMismatchError:
                counts.refused += 1
        counts.invalid += sum(r == INVALID for _, r in study)
        counts.other += sum(r is None for _, r in study)
        counts.failed += sum(r == FAILED for _, r in study)
        done = [instance.sop_uid for instance, r in study if r != FAILED]
        with self.path.open("a") as f:
            f.write("".join(sop + "\n" for sop in done))
        self.read.update(done)

    def _accept(self, report: Report) -> bool:
        if self._intake is None:
            self._intake = self._open_intake()
        return self._intake.accept(report).attached
