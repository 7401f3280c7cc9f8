"""A radiology report stored in the PACS as a DICOM Structured Report, read into a `Report`.

Text reports come as Basic Text, Enhanced or Comprehensive SR (TID 2000 and vendors' variants): a tree
of content items under the document's title. The findings and the impression are the TEXT items below
an item named Findings or Impression (DCM or LOINC codes, else the code's meaning); a report whose
text has no such headings is read as free text (`sections`). SR objects that are not text reports
(radiation dose, measurement or CAD reports) give None: they are no error, just not a report.
"""

from __future__ import annotations

import re

from cxr.reports.report import Report, ReportStatus, sections

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
# Comprehensive 3D and Extensible SR carry the same templates; other SR classes (dose, CAD, key
# objects) never hold a radiologist's report.
REPORT_SOP_CLASSES = {BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, "1.2.840.10008.5.1.4.1.1.88.34",
                      "1.2.840.10008.5.1.4.1.1.88.35"}
FINDINGS, IMPRESSION = "findings", "impression"
SECTION_CODES = {
    ("DCM", "121070"): FINDINGS, ("DCM", "121071"): FINDINGS,  # Findings, Finding
    ("LN", "59776-5"): FINDINGS, ("LN", "18782-3"): FINDINGS,  # Procedure findings, Radiology study observation
    ("DCM", "121073"): IMPRESSION, ("DCM", "121072"): IMPRESSION,  # Impression, Impressions
    ("DCM", "121077"): IMPRESSION, ("DCM", "121076"): IMPRESSION,  # Conclusion, Conclusions
    ("LN", "19005-8"): IMPRESSION,  # Radiology Impression
}
SECTION_MEANINGS = {"findings": FINDINGS, "finding": FINDINGS, "impression": IMPRESSION, "impressions": IMPRESSION,
                    "conclusion": IMPRESSION, "conclusions": IMPRESSION}
# Document titles of SR that are not reports even under a report SOP class (older modalities wrote
# dose reports as Comprehensive SR).
NOT_REPORT_TITLES = {("DCM", "113701"), ("DCM", "113500"), ("DCM", "126000"), ("DCM", "111036")}


def report_from_sr(dataset) -> Report | None:
    """The report an SR dataset holds; None when it is no text report (a dose report, an image).
    InvalidReportError when it names no study."""
    if str(dataset.get("SOPClassUID", "")) not in REPORT_SOP_CLASSES or _title(dataset) in NOT_REPORT_TITLES:
        return None
    findings, impression = _text(dataset.get("ContentSequence") or [])
    if not (findings or impression):
        return None
    return Report(accession_number=_accession(dataset), study_instance_uid=_str(dataset, "StudyInstanceUID"),
                  patient_id=_str(dataset, "PatientID"), status=status(dataset), time=content_time(dataset),
                  findings=findings, impression=impression, source="sr")


def status(dataset) -> ReportStatus:
    """Final when verified and complete (corrected when it names the documents it amends), else preliminary."""
    flags = (_str(dataset, "VerificationFlag").upper(), _str(dataset, "CompletionFlag").upper())
    if flags != ("VERIFIED", "COMPLETE") or _str(dataset, "PreliminaryFlag").upper() == "PRELIMINARY":
        return ReportStatus.PRELIMINARY
    return ReportStatus.CORRECTED if dataset.get("PredecessorDocumentsSequence") else ReportStatus.FINAL


def content_time(dataset) -> str:
    """ContentDate and ContentTime as ISO 8601 (2024-01-02T13:45:10), '' without a date."""
    date = _str(dataset, "ContentDate").replace("-", "")
    if not re.fullmatch(r"\d{8}", date):
        return ""
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", _str(dataset, "ContentTime").replace(":", ""))
    if not time:
        return iso
    hours, minutes, seconds, fraction = time.groups()
    return f"{iso}T{hours}:{minutes or '00'}:{seconds or '00'}{fraction or ''}"


def _str(dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def _accession(dataset) -> str:
    """AccessionNumber, else that of the first request the SR answers (Enhanced/Comprehensive SR)."""
    requests = dataset.get("ReferencedRequestSequence") or []
    return _str(dataset, "AccessionNumber") or next(filter(None, (_str(r, "AccessionNumber") for r in requests)), "")


def _code(item) -> tuple[str, str, str]:
    """(scheme, value, meaning) of a content item's concept name."""
    names = item.get("ConceptNameCodeSequence") or []
    if not names:
        return "", "", ""
    name = names[0]
    return _str(name, "CodingSchemeDesignator"), _str(name, "CodeValue"), _str(name, "CodeMeaning")


def _title(dataset) -> tuple[str, str]:
    scheme, value, _ = _code(dataset)
    return scheme, value


def _section(item) -> str | None:
    scheme, value, meaning = _code(item)
    return SECTION_CODES.get((scheme, value)) or SECTION_MEANINGS.get(meaning.lower())


def _text(content) -> tuple[str, str]:
    """(findings, impression) from the content tree; all its text split by headings when none is named."""
    found = {FINDINGS: [], IMPRESSION: [], None: []}
    for section, text in _texts(content, None):
        found[section].append(text)
    if found[FINDINGS] or found[IMPRESSION]:
        return "\n".join(found[FINDINGS]), "\n".join(found[IMPRESSION])
    return sections("\n".join(found[None]))


def _texts(content, section: str | None):
    """(section, text) of the TEXT items the tree CONTAINS, each in the section of its nearest named ancestor
    (observation context, such as a device observer's name, is not report text)."""
    for item in content:
        if _str(item, "RelationshipType").upper() not in ("", "CONTAINS"):
            continue
        here = _section(item) or section
        text = _str(item, "TextValue") if _str(item, "ValueType").upper() == "TEXT" else ""
        if text:
            yield here, text
        yield from _texts(item.get("ContentSequence") or [], here)
