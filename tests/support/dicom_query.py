"""A query image as a DICOM of a given patient: the sample radiograph's header around another image's
pixels (uncompressed), so that a test can ask for an archived image's neighbours with its PatientID."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from support import SAMPLE_DICOM


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
