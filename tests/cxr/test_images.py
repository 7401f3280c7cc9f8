"""Decoding what hospitals send: PNG 8/16-bit, JPEG, DICOM (MONOCHROME1, VOI window), bad bytes."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from benchmarks import hostile
from cxr.images import ImageTooLargeError, InvalidImageError, decode, is_dicom, preprocess
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


def test_an_eight_bit_dicom_of_a_png_s_pixels_decodes_to_the_png_s_pixels():
    png = DATA_DIR / "nih800" / "train" / "0_normal" / "00000032_010.png"  # grey 3..228: not full range
    grey = np.asarray(Image.open(png).convert("L"))
    dataset = pydicom.dcmread(DICOM)
    dataset.Rows, dataset.Columns = grey.shape
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.PixelData = grey.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert np.array_equal(np.asarray(decode(buffer.getvalue())), grey)
    assert np.array_equal(preprocess(buffer.getvalue(), 64), preprocess(png.read_bytes(), 64))


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


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("make, words", [
    (lambda: hostile.png_header_bomb(60_000, 60_000), "decompression bomb|3600.0 megapixels"),
    (lambda: hostile.png(14_000, 14_000), "14000 x 14000 = 196.0 megapixels"),
    (lambda: hostile.jpeg_claiming((SAMPLES / "16747_3_1.jpg").read_bytes(), 20_000, 20_000), "400000000 pixels"),
    (lambda: hostile.dicom_claiming(DICOM.read_bytes(), 10_000, 10_000, frames=3), "3 frame"),
])
def test_a_header_over_the_pixel_budget_is_refused_before_decoding(make, words):
    data = make()
    before = _rss_mb()
    with pytest.raises(ImageTooLargeError, match=words) as error:
        decode(data, max_pixels=50_000_000)
    assert "max_image_pixels" in str(error.value)
    assert _rss_mb() - before < 50  # the peak did not move: nothing was decoded


def test_an_image_within_the_budget_decodes():
    assert decode(hostile.png(3_000, 2_000), max_pixels=6_000_000).size == (3_000, 2_000)


@pytest.mark.parametrize("format", ["TIFF", "GIF", "BMP"])
def test_formats_other_than_png_and_jpeg_are_refused(format):
    with pytest.raises(InvalidImageError, match="not a PNG, JPEG or DICOM"):
        decode(hostile.encode(np.zeros((8, 8), np.uint8), format))


def test_sixteen_bit_images_scale_as_the_float_formula_says():
    values = np.random.default_rng(0).integers(300, 4000, size=(64, 48)).astype(np.uint16)
    grey = np.asarray(decode(hostile.encode(values, "PNG")))
    low, high = float(values.min()), float(values.max())
    assert np.array_equal(grey, np.round((values - low) * (255.0 / (high - low))).astype(np.uint8))
