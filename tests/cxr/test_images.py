"""Decoding what hospitals send: PNG 8/16-bit, JPEG, DICOM (MONOCHROME1, VOI window), bad bytes."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr.images import InvalidImageError, decode, is_dicom, preprocess
from support import DATA_DIR

SAMPLES = DATA_DIR / "cxr_samples"
DICOM = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _dicom_bytes(**changes) -> bytes:
    dataset = pydicom.dcmread(DICOM)
    for key, value in changes.items():
        setattr(dataset, key, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("path", sorted(SAMPLES.iterdir()), ids=lambda p: p.name[:24])
def test_every_sample_becomes_uint8_rgb_at_the_model_size(path):
    pixels = preprocess(path.read_bytes(), 448)
    assert pixels.shape == (448, 448, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 10  # an image, not a flat field


def test_grayscale_becomes_three_equal_channels():
    pixels = preprocess((SAMPLES / "00000001_000.png").read_bytes(), 224)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_sixteen_bit_png_is_windowed_to_its_own_range():
    grey = np.asarray(Image.open(SAMPLES / "00000001_000.png").convert("L"), dtype=np.uint16)
    twelve_bit = (grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # a 12-bit detector in a 16-bit PNG
    buffer = io.BytesIO()
    Image.fromarray(twelve_bit).save(buffer, format="PNG")
    decoded = np.asarray(decode(buffer.getvalue()))
    assert decoded.dtype == np.uint8 and decoded.max() == 255 and decoded.min() == grey.min()
    assert np.abs(decoded.astype(int) - grey.astype(int)).max() <= 1


def test_monochrome1_is_inverted_so_bone_stays_bright():
    assert is_dicom(DICOM.read_bytes())
    normal = np.asarray(decode(DICOM.read_bytes()), dtype=int)
    inverted = np.asarray(decode(_dicom_bytes(PhotometricInterpretation="MONOCHROME1")), dtype=int)
    assert np.array_equal(inverted, 255 - normal)


def test_dicom_window_from_the_header_is_applied():
    pixels = pydicom.dcmread(DICOM).pixel_array
    centre = float(np.percentile(pixels, 50))
    windowed = np.asarray(decode(_dicom_bytes(WindowCenter=centre, WindowWidth=20.0)))
    assert (windowed == 0).mean() > 0.3 and (windowed == 255).mean() > 0.3  # a narrow window saturates


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"Findings: no acute disease.\n", "not a PNG, JPEG or DICOM"),
    ((SAMPLES / "16747_3_1.jpg").read_bytes()[:3000], "truncated"),
    (b"\0" * 128 + b"DICM" + b"\0" * 64, "DICOM"),
])
def test_bad_bytes_raise_a_clear_error(data, words):
    with pytest.raises(InvalidImageError, match=words):
        preprocess(data, 224)
