"""A query image as a DICOM of a given patient: the sample radiograph's header around another image's
pixels (uncompressed), so that a test can ask for an archived image's neighbours with its PatientID;
and the NIH query the exclusion tests ask (00000116_017, of patient 116)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from support import DATA_DIR, SAMPLE_DICOM

NIH = DATA_DIR / "nih800"
QUERY, PATIENT = "00000116_017.png", "116"


def as_dicom(image: Path, patient_id: str, study_uid: str = "") -> bytes:
    pixels = np.asarray(Image.open(image).convert("L"), np.uint8)
    dataset = pydicom.dcmread(SAMPLE_DICOM)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelData = pixels.tobytes()
    dataset.PatientID, dataset.StudyInstanceUID = patient_id, study_uid or generate_uid()
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        dataset.pop(keyword, None)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def patients() -> dict[str, str]:
    """NIH image id -> patient id."""
    with (NIH / "labels.csv").open(newline="") as f:
        return {row["image_index"]: row["patient_id"] for row in csv.DictReader(f)}


def query_dicom() -> bytes:
    return as_dicom(next(NIH.glob(f"*/*/{QUERY}")), PATIENT)
