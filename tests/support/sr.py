"""DICOM Structured Reports as PACSs hold them, made with pydicom: a TID 2000 text report (Basic Text,
Enhanced or Comprehensive SR) and a TID 10001 X-Ray Radiation Dose Report, for cxr.reports.dicom_sr's
tests and the PACS build's."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, Sequence
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BASIC_TEXT = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
FINDINGS = ("121070", "DCM", "Findings")
FINDING = ("121071", "DCM", "Finding")
IMPRESSION = ("121073", "DCM", "Impression")
LN_FINDINGS = ("59776-5", "LN", "Procedure Findings")
LN_IMPRESSION = ("19005-8", "LN", "Radiology Impression")
REPORT_TITLE = ("18748-4", "LN", "Diagnostic Imaging Report")
DOSE_TITLE = ("113701", "DCM", "X-Ray Radiation Dose Report")


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def text(name: tuple, value: str, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, "TEXT"
    item.ConceptNameCodeSequence = Sequence([code(*name)])
    item.TextValue = value
    return item


def container(name: tuple, *children: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType, item.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    item.ConceptNameCodeSequence = Sequence([code(*name)])
    item.ContentSequence = Sequence(list(children))
    return item


def observer(name: str = "Dr^Reader") -> Dataset:
    """Observation context (TID 1002): the report's author, not its text."""
    item = Dataset()
    item.RelationshipType, item.ValueType = "HAS OBS CONTEXT", "PNAME"
    item.ConceptNameCodeSequence = Sequence([code("121008", "DCM", "Person Observer Name")])
    item.PersonName = name
    return item


def document(sop_class: str, title: tuple, content: list[Dataset], study_uid: str, patient_id: str,
             accession: str = "", verified: bool = True, complete: bool = True, content_date: str = "20240102",
             content_time: str = "134510", series_uid: str = "", sop_uid: str = "") -> Dataset:
    """An SR document: the patient, study and SR series modules, the SR document general module's flags,
    and the content tree under its title."""
    ds = Dataset()
    sop_uid = sop_uid or generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientID, ds.PatientName = patient_id, f"TEST^PATIENT{patient_id}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid or generate_uid()
    ds.AccessionNumber, ds.StudyDate, ds.StudyTime = accession, "20240102", "120000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ContentDate, ds.ContentTime = content_date, content_time
    ds.CompletionFlag = "COMPLETE" if complete else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code(*title)])
    ds.ContentSequence = Sequence([observer()] + content)
    return ds


def text_report(sop_class: str, study_uid: str, patient_id: str, findings: str, impression: str, **kwargs) -> Dataset:
    """TID 2000: Findings and Impression containers holding TEXT items (Finding / Impression)."""
    content = [container(FINDINGS, text(FINDING, findings)), container(IMPRESSION, text(IMPRESSION, impression))]
    return document(sop_class, REPORT_TITLE, content, study_uid, patient_id, **kwargs)


def dose_report(study_uid: str, patient_id: str, sop_class: str = DOSE_SR) -> Dataset:
    """TID 10001: an accumulated dose container with a NUM item and a comment; no report text."""
    dose = Dataset()
    dose.RelationshipType, dose.ValueType = "CONTAINS", "NUM"
    dose.ConceptNameCodeSequence = Sequence([code("113722", "DCM", "Dose Area Product Total")])
    measured = Dataset()
    measured.NumericValue = "0.0123"
    measured.MeasurementUnitsCodeSequence = Sequence([code("Gy.m2", "UCUM", "Gy.m2")])
    dose.MeasuredValueSequence = Sequence([measured])
    comment = text(("121106", "DCM", "Comment"), "two exposures")
    accumulated = container(("113702", "DCM", "Accumulated X-Ray Dose Data"), dose, comment)
    return document(sop_class, DOSE_TITLE, [accumulated], study_uid, patient_id)


def write(dataset: Dataset, folder: Path) -> Path:
    """`dataset` as a Part-10 file <sop>.dcm in `folder` (for STOW-RS)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path
