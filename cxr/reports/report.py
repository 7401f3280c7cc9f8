"""One radiology report as it arrives from the RIS (HL7 v2), the EHR (FHIR) or the PACS (DICOM SR).

A report names its study by AccessionNumber and/or StudyInstanceUID (for file archives such as IU-Xray,
the archive's study uid). Its text is patient data: it is stored and shown behind the `studies` scope,
never logged; a Report's repr leaves it out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from cxr.errors import InvalidArgumentError


class ReportStatus(enum.Enum):
    """The result status a RIS sends (HL7 OBR-25, FHIR DiagnosticReport.status)."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    CORRECTED = "corrected"  # replaces the text of an earlier report of the study
    CANCELLED = "cancelled"  # removes it


class InvalidReportError(InvalidArgumentError, ValueError):
    """A report that cannot be stored: no study named, an unknown status, an unreadable message."""


def not_text(path, error: UnicodeDecodeError) -> InvalidReportError:
    """A report file that is not UTF-8 text (a binary file given by mistake, another encoding)."""
    return InvalidReportError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): give a FHIR NDJSON "
                              "export or an IU-Xray indiana_reports.csv, saved as UTF-8")


@dataclass(frozen=True)
class Report:
    accession_number: str = ""
    study_instance_uid: str = ""  # or the archive's study uid where it has no DICOM one
    patient_id: str = field(default="", repr=False)  # the sender's patient id, checked against the study's
    status: ReportStatus = ReportStatus.FINAL
    time: str = ""  # when the report was made or last changed, ISO 8601 (as the sender says)
    findings: str = field(default="", repr=False)
    impression: str = field(default="", repr=False)
    source: str = ""  # hl7, fhir, sr, csv: for the log and the ledger

    def __post_init__(self):
        if not (self.accession_number.strip() or self.study_instance_uid.strip()):
            raise InvalidReportError("the report names no study: it needs an accession number or a study instance "
                                     "uid to be joined to the study's images")

    @property
    def text(self) -> str:
        return " ".join(part.strip() for part in (self.findings, self.impression) if part.strip())

    @property
    def key(self) -> str:
        """What a later report of the same study replaces it by: its accession number, else its study uid."""
        accession = self.accession_number.strip()
        return f"accession:{accession}" if accession else f"study:{self.study_instance_uid.strip()}"


# Section headings of a free-text report, at a line's start or within a line ("FINDINGS: ... IMPRESSION:
# ..."). A report with neither heading is all impression: the part a radiologist writes for the reader.
_HEADING = re.compile(r"(?:^|(?<=\s))(findings|impression|conclusion|summary)[ \t]*:\s*",
                      re.IGNORECASE | re.MULTILINE)
_IMPRESSION_HEADINGS = {"impression", "conclusion", "summary"}


def sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a free-text report with FINDINGS: / IMPRESSION: headings."""
    parts = _HEADING.split(text)
    if len(parts) == 1:
        return "", text.strip()
    findings, impression = [], []
    for heading, body in zip(parts[1::2], parts[2::2]):
        (impression if heading.lower() in _IMPRESSION_HEADINGS else findings).append(body.strip())
    preamble = parts[0].strip()
    if preamble and not findings:
        findings.append(preamble)
    return "\n".join(p for p in findings if p), "\n".join(p for p in impression if p)
