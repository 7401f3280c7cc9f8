"""Radiology reports from the EHR: FHIR R4 DiagnosticReport resources in a Bulk Data export (NDJSON,
one resource a line), read with fhir.resources' R4B models (R4B changed nothing of DiagnosticReport,
ImagingStudy or Patient that is read here; fhir.resources has no R4 package under pydantic 2).

- text: the first `presentedForm` attachment given inline as text/plain or text/html (tags stripped),
  split by `sections`; else `conclusion`, as the impression (also when the text has no impression).
  Attachments by `url` or of other types (PDF) are not fetched or read.
- status: registered/partial/preliminary -> preliminary, final, amended/corrected/appended -> corrected,
  cancelled/entered-in-error -> cancelled.
- time: `issued`, else `effectiveDateTime`.
- accession: an identifier of type ACSN (v2-0203) or whose system names an accession, on the report,
  its `basedOn` references, else its ImagingStudy.
- study: `imagingStudy` -> an ImagingStudy (contained, or in the same file) whose identifier
  `urn:dicom:uid` is `urn:oid:<StudyInstanceUID>`, or such an identifier on the reference itself.
- patient: the patient's medical record number, which is what the PACS holds as PatientID: the MR
  identifier (else the only one) of the Patient the `subject` names (contained or in the same file),
  else the reference's own identifier; only when none is known the logical id of `Patient/<id>`.
  An export should carry its Patient resources, or every report is checked against a server id.

Lines that are neither DiagnosticReport nor ImagingStudy/Patient are skipped; a line that is not a
usable DiagnosticReport gives an InvalidReportError naming its line number, never its content. The
file is read twice, line by line: first the small ImagingStudy and Patient join tables, then the reports.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from cxr.reports.report import InvalidReportError, Report, ReportStatus, not_text, sections

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types: ACSN, MR
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections
DICOM_UID_SYSTEM = "urn:dicom:uid"
JOINED = ("ImagingStudy", "Patient")
STATUSES = {
    "registered": ReportStatus.PRELIMINARY, "partial": ReportStatus.PRELIMINARY,
    "preliminary": ReportStatus.PRELIMINARY, "final": ReportStatus.FINAL, "amended": ReportStatus.CORRECTED,
    "corrected": ReportStatus.CORRECTED, "appended": ReportStatus.CORRECTED, "cancelled": ReportStatus.CANCELLED,
    "entered-in-error": ReportStatus.CANCELLED,
}
# Imaging sections of v2-0074 and LOINC's Radiology part: a report of another category (a lab result)
# that names no ImagingStudy is not a radiology report, and is skipped rather than counted invalid.
IMAGING_CATEGORIES = {"RAD", "RX", "CT", "NMR", "NMS", "VUS", "OUS", "CUS", "RUS", "XRC", "LP29684-5"}

Line = tuple[int, Report | InvalidReportError | None]  # (line number, its report, why not, or None: not one)
_JOINED = object()  # an ImagingStudy or Patient line: read for the joins, not a report nor a skipped line


@dataclass(frozen=True)
class Study:
    uid: str
    accession: str


@dataclass
class Joins:
    """What the reports refer to: ImagingStudy id -> Study, Patient id -> medical record number."""
    studies: dict[str, Study]
    patients: dict[str, str]


def read_ndjson(path: Path) -> Iterator[Line]:
    """Every line of a Bulk Data NDJSON file but its ImagingStudy and Patient lines: (number, Report |
    InvalidReportError | None)."""
    joins = _joins(path)
    for number, line in _lines(path):
        item = _line(number, line, joins)
        if item is not _JOINED:
            yield number, item


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as exc:
        raise not_text(path, exc) from exc


def _joins(path: Path) -> Joins:
    """The ImagingStudy and Patient resources of the file (their lines are skipped by a quick look first)."""
    from fhir.resources.R4B.imagingstudy import ImagingStudy
    from fhir.resources.R4B.patient import Patient

    joins = Joins({}, {})
    for _, line in _lines(path):
        if not any(f'"{kind}"' in line for kind in JOINED):
            continue
        try:
            resource = json.loads(line)
            if resource.get("resourceType") == "ImagingStudy":
                joins.studies[resource.get("id", "")] = _study(ImagingStudy.model_validate(resource))
            elif resource.get("resourceType") == "Patient":
                joins.patients[resource.get("id", "")] = _record_number(Patient.model_validate(resource))
        except ValueError:  # not JSON or not valid: a report naming it will say so
            continue
    return joins


def _line(number: int, line: str, joins: Joins) -> Report | InvalidReportError | object | None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydantic import ValidationError

    try:
        resource = json.loads(line)
    except ValueError:
        return InvalidReportError(f"line {number}: not JSON")
    if not isinstance(resource, dict):
        return InvalidReportError(f"line {number}: not a FHIR resource")
    if resource.get("resourceType") in JOINED:
        return _JOINED
    if resource.get("resourceType") != "DiagnosticReport":
        return None
    try:
        return _report(DiagnosticReport.model_validate(resource), joins)
    except ValidationError as exc:
        return InvalidReportError(f"line {number}: not a valid FHIR R4 DiagnosticReport ({_fields(exc)})")
    except InvalidReportError as exc:
        return InvalidReportError(f"line {number}: {exc}")


def _fields(exc) -> str:
    """Which fields failed and how, without the values (they may be patient data)."""
    errors = exc.errors()
    shown = [".".join(map(str, e["loc"])) + f": {e['type']}" for e in errors[:3]]
    return "; ".join(shown) + (f"; {len(errors) - 3} more" if len(errors) > 3 else "")


def _report(resource, joins: Joins) -> Report | None:
    status = STATUSES.get(resource.status or "")
    if status is None:
        raise InvalidReportError(f"status {resource.status!r} is none of {sorted(STATUSES)}")
    contained = {c.id: c for c in resource.contained or [] if c.id}
    studies = [_referenced_study(ref, contained, joins) for ref in resource.imagingStudy or []]
    study = next((s for s in studies if s is not None), Study("", ""))
    if not studies and not _imaging(resource):
        return None  # a laboratory or other non-imaging report
    findings, impression = _text(resource)
    if status is not ReportStatus.CANCELLED and not (findings or impression):
        raise InvalidReportError("no text: neither an inline text/plain or text/html presentedForm nor a "
                                 "conclusion (attachments by url or of other types are not read)")
    return Report(accession_number=_accession(resource) or study.accession, study_instance_uid=study.uid,
                  patient_id=_patient(resource.subject, contained, joins), status=status, time=_time(resource),
                  findings=findings, impression=impression, source="fhir")


def _imaging(resource) -> bool:
    """No category, or one of imaging."""
    codes = {c.code for category in resource.category or [] for c in category.coding or []}
    return not codes or bool(codes & IMAGING_CATEGORIES)


def _text(resource) -> tuple[str, str]:
    conclusion = (resource.conclusion or "").strip()
    text = next(filter(None, map(_attachment_text, resource.presentedForm or [])), "")
    if not text:
        return "", conclusion
    findings, impression = sections(text)
    return findings, impression or conclusion


def _attachment_text(attachment) -> str:
    kind = (attachment.contentType or "").split(";")[0].strip().lower()
    if attachment.data is None or kind not in ("text/plain", "text/html"):
        return ""
    charset = re.search(r"charset=([\w-]+)", attachment.contentType or "", re.IGNORECASE)
    text = attachment.data.decode(charset.group(1) if charset else "utf-8", errors="replace")
    return (_html_text(text) if kind == "text/html" else text).strip()


class _TextOf(HTMLParser):
    """The text of an HTML report: tags dropped, block ends kept as line ends (for the headings)."""

    BLOCKS = {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        self._skipping += tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self._skipping -= tag in ("script", "style") and self._skipping > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", html.unescape(line)).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _time(resource) -> str:
    value = resource.issued or resource.effectiveDateTime
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _is_type(identifier, code: str) -> bool:
    codings = (identifier.type.coding or []) if identifier.type else []
    return any(c.code == code and (c.system or V2_0203) == V2_0203 for c in codings)


def _accession_of(identifiers) -> str:
    for identifier in identifiers or []:
        if identifier.value and (_is_type(identifier, "ACSN") or "accession" in (identifier.system or "").lower()):
            return identifier.value.strip()
    return ""


def _accession(resource) -> str:
    """On the report, else on the order it fulfils (basedOn's identifier)."""
    return _accession_of(resource.identifier) or _accession_of(
        [ref.identifier for ref in resource.basedOn or [] if ref.identifier])


def _dicom_uid(identifiers) -> str:
    for identifier in identifiers or []:
        value = (identifier.value or "").strip()
        if identifier.system == DICOM_UID_SYSTEM and value:
            return value.removeprefix("urn:oid:")
    return ""


def _study(imaging_study) -> Study:
    return Study(_dicom_uid(imaging_study.identifier), _accession_of(imaging_study.identifier))


def _referenced_study(reference, contained: dict, joins: Joins) -> Study | None:
    """The study an imagingStudy reference names: by its identifier, a contained or a joined ImagingStudy."""
    if reference.identifier is not None and (uid := _dicom_uid([reference.identifier])):
        return Study(uid, "")
    target = reference.reference or ""
    if target.startswith("#") and target[1:] in contained:
        return _study(contained[target[1:]])
    return joins.studies.get(target.rsplit("ImagingStudy/", 1)[-1]) if "ImagingStudy/" in target else None


def _record_number(patient) -> str:
    """The Patient's MR identifier, else its only identifier ('' when neither)."""
    identifiers = [i for i in patient.identifier or [] if i.value]
    chosen = next((i for i in identifiers if _is_type(i, "MR")), identifiers[0] if len(identifiers) == 1 else None)
    return chosen.value.strip() if chosen else ""


def _patient(subject, contained: dict, joins: Joins) -> str:
    if subject is None:
        return ""
    target = subject.reference or ""
    if target.startswith("#") and target[1:] in contained:
        return _record_number(contained[target[1:]])
    logical = target.rsplit("Patient/", 1)[-1] if "Patient/" in target else ""
    if joins.patients.get(logical):
        return joins.patients[logical]
    if subject.identifier is not None and subject.identifier.value:
        return subject.identifier.value.strip()
    return logical
