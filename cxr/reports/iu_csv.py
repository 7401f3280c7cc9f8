"""Reports of an IU-Xray (Open-i) archive: indiana_reports.csv's uid, findings and impression columns
(MeSH, Problems and the rest are not read). `uid` is the study uid of an index built from the archive,
so each report joins its study by it; the archive's reports are final and name no patient.
Read as cxr.archives reads the archive's CSVs (UTF-8 with or without BOM), row by row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from cxr.reports.report import InvalidReportError, Report, ReportStatus, not_text

COLUMNS = ("uid", "findings", "impression")


def read_csv(path: Path) -> Iterator[tuple[int, Report | InvalidReportError]]:
    """(line number, Report or why the row gives none) for each row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise InvalidReportError(f"{path} lacks the columns {missing} of an IU-Xray indiana_reports.csv "
                                         f"(it has {reader.fieldnames}); FHIR reports go in an .ndjson file")
            start = reader.line_num + 1
            for row in reader:  # a quoted field may span lines: a row is known by its first
                yield start, _report(start, row)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise not_text(path, exc) from exc


def _report(number: int, row: dict) -> Report | InvalidReportError:
    uid, findings, impression = ((row.get(c) or "").strip() for c in COLUMNS)
    if not uid:
        return InvalidReportError(f"line {number}: no uid")
    if not (findings or impression):
        return InvalidReportError(f"line {number}: neither findings nor impression")
    return Report(study_instance_uid=uid, status=ReportStatus.FINAL, findings=findings, impression=impression,
                  source="csv")
