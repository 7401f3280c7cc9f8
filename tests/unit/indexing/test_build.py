"""What a build records for one image's bytes (indexing.build.decode_bytes, run in the decoder workers for
files and for PACS instances alike): pixels, or the reason skipped.csv gives."""

import io

import pytest

from benchmarks import dicom_variants
from indexing.build import NOT_COMPARABLE, decode_bytes
from support import SAMPLE_DICOM


def _bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("name, reason", [
    ("sr", "a structured report (SR), not an image"),
    ("ko", "a key object selection document (KO), not an image"),
    ("for-processing", "raw detector data (PresentationIntentType FOR PROCESSING)"),
    ("knee", "an image of another body part"),
])
def test_an_object_with_no_chest_image_to_compare_is_skipped_with_its_reason(name, reason):
    key, pixels, why = decode_bytes("k", _bytes(dicom_variants.not_comparable()[name]), 64)
    assert (key, pixels) == ("k", None)
    assert why.startswith(f"{NOT_COMPARABLE}: {reason}")


def test_a_chest_radiograph_is_decoded_and_damaged_bytes_are_unreadable():
    key, pixels, why = decode_bytes(7, SAMPLE_DICOM.read_bytes(), 64)
    assert (key, pixels.shape, why) == (7, (64, 64, 3), "")
    assert decode_bytes(7, SAMPLE_DICOM.read_bytes()[:1000], 64)[2].startswith("not a readable image: ")
