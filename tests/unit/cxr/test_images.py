"""Decoding what hospitals send: PNG 8/16-bit, JPEG, DICOM (MONOCHROME1, VOI window), bad bytes, and
what hostile clients send: headers that lie, shapes no radiograph has, bombs (issue 17)."""

import io
import threading
import time

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile

from benchmarks import dicom_variants, hostile
from cxr import codestreams, images
from cxr.images import (
    DecodeBusyError,
    ImageLimits,
    ImageTooLargeError,
    InvalidImageError,
    NotComparableError,
    PixelBudget,
    decode,
    dicom_identity,
    is_dicom,
    preprocess,
)
from support import DATA_DIR

SAMPLES = DATA_DIR / "cxr_samples"
DICOM = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
GATEWAY = ImageLimits(max_pixels=50_000_000)  # the gateway's defaults (cxr.settings)


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


@pytest.fixture
def forbid_decoding(monkeypatch):
    """Called once the payload is made: from then on any pixel decoding (PIL's, pydicom's) fails the
    test, so a refusal must come from headers alone."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    def forbid():
        monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
        monkeypatch.setattr(pydicom.pixels, "pixel_array", forbidden)

    return forbid


@pytest.mark.parametrize("make", [
    lambda: hostile.png_header_bomb(60_000, 60_000),
    lambda: hostile.png(14_000, 14_000),
    lambda: hostile.jpeg_claiming((SAMPLES / "16747_3_1.jpg").read_bytes(), 20_000, 20_000),
    lambda: hostile.dicom_claiming(DICOM.read_bytes(), 10_000, 10_000, frames=3),
])
def test_a_header_over_the_pixel_budget_is_refused_before_decoding(make, forbid_decoding):
    data = make()
    forbid_decoding()
    with pytest.raises(ImageTooLargeError, match="max_image_pixels allows \\(50.0 megapixels"):
        decode(data, GATEWAY)


def test_an_image_within_the_budget_decodes():
    assert decode(hostile.png(3_000, 2_000), ImageLimits(max_pixels=6_000_000)).size == (3_000, 2_000)


@pytest.mark.parametrize("make, setting", [
    (lambda: hostile.png(1, 49_000_000), "max_image_side"),  # defect 4: 95 KB, 2-4 GB to resize
    (lambda: hostile.png(49_000_000, 1), "max_image_side"),
    (lambda: hostile.png(12_000, 1_000), "max_image_aspect"),
    (lambda: hostile.png(100, 900), "max_image_aspect"),
    (lambda: hostile.jpeg_claiming((SAMPLES / "16747_3_1.jpg").read_bytes(), 30_000, 1_000), "max_image_side"),
    (lambda: hostile.dicom_claiming(DICOM.read_bytes(), 9_000, 1_000), "max_image_aspect"),
])
def test_shapes_no_radiograph_has_are_refused_before_decoding(make, setting, forbid_decoding):
    data = make()
    forbid_decoding()
    with pytest.raises(ImageTooLargeError, match=setting):
        preprocess(data, 224, GATEWAY)


def test_shapes_at_the_limits_decode():
    assert decode(hostile.png(1_000, 8_000), GATEWAY).size == (1_000, 8_000)  # 1:8
    assert decode(hostile.png(20_000, 2_500), GATEWAY).size == (20_000, 2_500)  # the longest side, 50 MP


def _mpo() -> bytes:
    """Two 16 x 16 JPEGs one after the other (a multi-picture file, which PIL opens as a JPEG)."""
    frame = Image.fromarray(np.full((16, 16), 128, np.uint8))
    buffer = io.BytesIO()
    frame.save(buffer, format="MPO", save_all=True, append_images=[frame])
    return buffer.getvalue()


@pytest.mark.parametrize("make", [
    lambda: hostile.jpeg_claiming(_jpeg(16), 7_000, 7_000),  # defect 19: 16 x 16 of data under a 7000 x 7000 header
    lambda: hostile.jpeg_claiming(_mpo(), 7_000, 7_000),
])
def test_a_jpeg_whose_header_claims_more_than_its_data_holds_is_refused(make, forbid_decoding):
    data = make()
    assert len(data) < 1000
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="less coded data than the size its header declares"):
        preprocess(data, 224, GATEWAY)


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.jpg")), ids=lambda p: p.name[:24])
@pytest.mark.parametrize("quality, progressive", [(5, True), (5, False), (75, True)])
def test_real_jpegs_hold_far_more_coded_data_than_the_floor(path, quality, progressive):
    grey = Image.open(path).convert("L")
    for image in (grey, Image.new("L", grey.size, 0)):  # a radiograph at its worst quality, and a flat field
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, progressive=progressive)
        coded = codestreams.jpeg_header(buffer.getvalue()).coded_bytes
        assert coded * images.JPEG_PIXELS_PER_CODED_BYTE > 1.5 * image.width * image.height


def test_a_png_with_dicm_at_byte_128_is_a_png():
    png = (SAMPLES / "00000001_000.png").read_bytes()
    tagged = hostile.png_with_text_at(png, 128, b"DICM")
    assert tagged[128:132] == b"DICM" and not is_dicom(tagged)
    assert np.array_equal(preprocess(tagged, 224, GATEWAY), preprocess(png, 224, GATEWAY))
    assert not is_dicom(b"\xff\xd8\xff\xe0" + b"\0" * 124 + b"DICM")
    assert is_dicom(DICOM.read_bytes())


def _encapsulated(header: int, frame: bytes, syntax=pydicom.uid.JPEGBaseline8Bit) -> bytes:
    return hostile.dicom_around_frame(DICOM.read_bytes(), frame, header, header, syntax)


def _jpeg(side: int) -> bytes:
    return hostile.encode(np.asarray(Image.open(SAMPLES / "00000001_000.png").convert("L").resize((side, side))),
                          "JPEG", quality=90)


def test_a_dicom_decodes_its_frame_when_the_frame_says_what_the_header_says():
    grey = np.asarray(decode(_encapsulated(256, _jpeg(256)), GATEWAY))
    assert grey.shape == (256, 256) and grey.std() > 10


@pytest.mark.parametrize("frame, syntax", [
    (lambda: hostile.jpeg_claiming(_jpeg(64), 14_000, 14_000), pydicom.uid.JPEGBaseline8Bit),  # defect 11
    (lambda: _jpeg(128), pydicom.uid.JPEGBaseline8Bit),
    (lambda: hostile.encode(np.zeros((128, 96), np.uint8), "JPEG2000", no_jp2=True), pydicom.uid.JPEG2000Lossless),
    (lambda: hostile.encode(np.zeros((128, 96), np.uint8), "JPEG2000"), pydicom.uid.JPEG2000),  # a JP2 file
    (lambda: _jpeg_ls_header(14_000, 14_000), pydicom.uid.JPEGLSLossless),
])
def test_a_dicom_frame_that_disagrees_with_rows_and_columns_is_refused_before_decoding(frame, syntax,
                                                                                       forbid_decoding):
    data = _encapsulated(64, frame(), syntax)
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="Rows, Columns and SamplesPerPixel") as error:
        preprocess(data, 224, GATEWAY)
    assert "broadcast" not in str(error.value)


def test_a_dicom_frame_whose_header_claims_more_than_its_data_holds_is_refused(forbid_decoding):
    data = _encapsulated(7_000, hostile.jpeg_claiming(_jpeg(16), 7_000, 7_000))
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="JPEG frame holds less coded data"):
        preprocess(data, 224, GATEWAY)


@pytest.mark.parametrize("frame, syntax", [
    (lambda: hostile.encode(np.zeros((64, 64), np.uint8), "JPEG2000", no_jp2=True), pydicom.uid.JPEGBaseline8Bit),
    (lambda: _jpeg(64), pydicom.uid.JPEG2000Lossless),
    (lambda: _jpeg(64), "1.2.840.10008.1.2.4.100"),  # MPEG-2: no frame header this gateway reads
    (lambda: _jpeg(64), "1.2.3.4.5"),  # no transfer syntax at all
])
def test_a_dicom_whose_frame_is_not_what_its_transfer_syntax_says_is_refused_before_decoding(frame, syntax,
                                                                                           forbid_decoding):
    data = _encapsulated(64, frame(), syntax)
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="transfer syntax|header: send the original file"):
        preprocess(data, 224, GATEWAY)


def _jpeg_ls_header(width: int, height: int) -> bytes:
    """SOI, SOF55 (P=8, Y, X, one component), SOS and a little scan data: what CharLS writes first."""
    sof = b"\xff\xf7\x00\x0b\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + b"\x00" * 32 + b"\xff\xd9"


def test_frame_headers_are_read_from_jpeg_jpeg_ls_and_jpeg_2000_codestreams():
    jpeg = codestreams.jpeg_header(_jpeg(40))
    assert (jpeg.width, jpeg.height, jpeg.components, jpeg.jpeg_ls) == (40, 40, 1, False) and jpeg.coded_bytes > 0
    ls = codestreams.jpeg_header(_jpeg_ls_header(300, 200))
    assert (ls.width, ls.height, ls.components, ls.jpeg_ls) == (300, 200, 1, True)
    for options in ({}, {"no_jp2": True}):  # a JP2 file, a bare codestream
        j2k = codestreams.j2k_header(hostile.encode(np.zeros((120, 70, 3), np.uint8), "JPEG2000", **options))
        assert (j2k.width, j2k.height, j2k.components) == (70, 120, 3)
    for read in (codestreams.jpeg_header, codestreams.j2k_header):
        with pytest.raises(codestreams.CodestreamError):
            read(b"\x00" * 64)


def _native_dicom(syntax=pydicom.uid.ExplicitVRLittleEndian) -> bytes:
    """The sample DICOM with its pixel data uncompressed, in `syntax`."""
    dataset = pydicom.dcmread(DICOM)
    dataset.decompress()
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_deflated_dicom_decodes_as_the_same_dicom_uncompressed():
    plain, deflated = _native_dicom(), _native_dicom(pydicom.uid.DeflatedExplicitVRLittleEndian)
    assert len(deflated) < 0.6 * len(plain)
    assert np.array_equal(preprocess(deflated, 224, GATEWAY), preprocess(plain, 224, GATEWAY))
    padded = deflated + b"\0"  # bytes after the deflate stream's end (DICOM pads to even length) are not inflated
    assert np.array_equal(preprocess(padded, 224, GATEWAY), preprocess(plain, 224, GATEWAY))


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(monkeypatch, forbid_decoding):
    data = hostile.deflated_dicom_bomb(DICOM.read_bytes(), 1024 * 2**20)  # 1 MB that inflates to 1 GB
    assert len(data) < 2**21
    forbid_decoding()

    def inflating(*args, **kwargs):
        raise AssertionError("pydicom read the dataset")

    monkeypatch.setattr(pydicom, "dcmread", inflating)
    with pytest.raises(ImageTooLargeError, match="inflates past what max_image_pixels allows"):
        preprocess(data, 224, GATEWAY)


UPLOAD_MARKER = b"PatientJaneRoe"


@pytest.mark.parametrize("make", [
    lambda: UPLOAD_MARKER + b": no acute disease.\n",
    lambda: (SAMPLES / "16747_3_1.jpg").read_bytes()[:3000],
    lambda: b"\0" * 128 + b"DICM" + UPLOAD_MARKER * 8,
    lambda: hostile.dicom_claiming(_native_dicom(), 2_000, 2_000),  # pydicom: the pixel data is too short
    lambda: _encapsulated(64, _jpeg(64)[:200]),  # the frame's codec says it is damaged
    lambda: hostile.png(64, 64, rows=UPLOAD_MARKER),
    lambda: hostile.deflated_dicom_bomb(DICOM.read_bytes(), 2**20)[:600] + UPLOAD_MARKER,
])
def test_image_errors_quote_neither_the_upload_nor_the_library(make):
    data = make()
    with pytest.raises(InvalidImageError) as error:
        preprocess(data, 224, GATEWAY)
    message, cause = str(error.value), error.value.__cause__
    assert UPLOAD_MARKER.decode() not in message and repr(data[:8]) not in message, message
    assert cause is not None and str(cause) not in message, message  # chained for the log, not shown
    assert "send" in message  # and it says what to do


def test_a_pixel_budget_makes_a_decode_wait_for_room_until_its_deadline():
    budget, holding, release, waited = PixelBudget(max_pixels=100), threading.Event(), threading.Event(), []

    def large():
        with budget.hold(80):
            holding.set()
            release.wait(10)

    def waiting():
        with budget.hold(30, deadline=time.monotonic() + 10):
            waited.append(budget.in_use)

    first = threading.Thread(target=large)
    first.start()
    holding.wait(10)
    with pytest.raises(DecodeBusyError, match="max_decoding_pixels"):
        with budget.hold(30, deadline=time.monotonic()):
            pass
    with budget.hold(20, deadline=time.monotonic()):  # what fits goes at once
        pass
    second = threading.Thread(target=waiting)
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert waited == [30] and budget.in_use == 0
    with budget.hold(500, deadline=time.monotonic()):  # alone, any image the limits let through is decoded
        pass


def test_a_preprocess_holds_its_pixels_in_the_budget_while_it_decodes(monkeypatch):
    budget, seen = PixelBudget(max_pixels=10**9), []
    resize = images.to_pixels

    def spying(image, size):
        seen.append(budget.in_use)
        return resize(image, size)

    monkeypatch.setattr(images, "to_pixels", spying)
    preprocess((SAMPLES / "16747_3_1.jpg").read_bytes(), 64, GATEWAY, budget)
    assert seen == [1036 * 885] and budget.in_use == 0


@pytest.mark.parametrize("format", ["TIFF", "GIF", "BMP"])
def test_formats_other_than_png_and_jpeg_are_refused(format):
    with pytest.raises(InvalidImageError, match="not a PNG, JPEG or DICOM"):
        decode(hostile.encode(np.zeros((8, 8), np.uint8), format))


def test_sixteen_bit_images_scale_as_the_float_formula_says():
    values = np.random.default_rng(0).integers(300, 4000, size=(64, 48)).astype(np.uint16)
    grey = np.asarray(decode(hostile.encode(values, "PNG")))
    low, high = float(values.min()), float(values.max())
    assert np.array_equal(grey, np.round((values - low) * (255.0 / (high - low))).astype(np.uint8))


@pytest.mark.parametrize("name, words", [
    ("sr", "structured report"), ("pr", "presentation state"), ("ko", "key object selection"),
    ("for-processing", "FOR PROCESSING"), ("knee", "another body part"),
])
def test_a_dicom_with_no_chest_image_to_compare_is_refused_with_the_reason_before_decoding(name, words,
                                                                                          forbid_decoding):
    buffer = io.BytesIO()
    dicom_variants.not_comparable()[name].save_as(buffer, enforce_file_format=True)
    forbid_decoding()
    with pytest.raises(NotComparableError, match=words) as error:
        preprocess(buffer.getvalue(), 224, GATEWAY)
    assert words in error.value.reason and str(error.value).startswith("the DICOM is ")
    assert "search with a chest radiograph" in str(error.value)


def test_an_rle_bomb_is_decoded_no_further_than_rows_x_columns():
    """8 MB of runs that inflate to 512 MB under a 64 x 64 header: pydicom's own RLE decoder inflates it
    all before it looks at the length (seconds, and memory past any pixel limit); pylibjpeg-rle stops."""
    data = hostile.rle_dicom(DICOM.read_bytes(), [b"\x81\x00" * 4_000_000], 64, 64)
    started = time.perf_counter()
    try:
        assert preprocess(data, 64, GATEWAY).shape == (64, 64, 3)
    except InvalidImageError:
        pass
    assert time.perf_counter() - started < 1.0


def test_an_rle_segment_running_past_its_frame_is_refused_as_damaged():
    """In a 16-bit frame, a run across the end of a segment makes pylibjpeg-rle panic (pyo3's PanicException,
    no Exception)."""
    full = b"\x81\x00" * 32  # 64 x 64 = 4096 bytes in runs of 128
    over = full[:-2] + b"\x00\x05" + b"\x81\x01"  # 3968 + 1 + 128 bytes: the last run crosses the end
    data = hostile.rle_dicom(DICOM.read_bytes(), [full, over], 64, 64)
    with pytest.raises(InvalidImageError, match="RLE Lossless pixel data could not be decoded") as error:
        preprocess(data, 64, GATEWAY)
    assert type(error.value.__cause__).__name__ == images.RUST_PANIC


@pytest.mark.parametrize("region, box", [(images.Region(0, 0, 1, 1), (0, 0, 200, 100)),
                                         (images.Region(0.5, 0.25, 0.5, 0.5), (100, 25, 200, 75)),
                                         (images.Region(0.999, 0.999, 0.001, 0.001), (199, 99, 200, 100)),
                                         (images.Region(0.3, 0.7, 0.7, 0.3000001), (60, 70, 200, 100))])
def test_a_region_is_a_box_of_at_least_one_pixel_inside_the_image(region, box):
    assert region.box(200, 100) == box


@pytest.mark.parametrize("values", [(0, 0, 0, 1), (0, 0, 1, 0), (-0.1, 0, 0.5, 0.5), (0.6, 0, 0.5, 1),
                                    (0, 0.5, 1, 0.6), (float("nan"), 0, 1, 1), (0, 0, 1.5, 1)])
def test_a_region_outside_the_image_is_refused(values):
    with pytest.raises(images.InvalidRegionError, match="region"):
        images.Region(*values)


def test_a_region_is_cut_after_windowing_and_before_resizing():
    pixels = np.zeros((40, 80), np.uint16)
    pixels[:, 40:] = 4000  # a 16-bit image: windowed to its own range (0..4000), the right half white
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    cropped = images.preprocess(out.getvalue(), 32, region=images.Region(0.5, 0, 0.5, 1))
    assert cropped.shape == (32, 32, 3) and cropped.min() == 255  # the window of the whole image, not the crop's
    whole = images.preprocess(out.getvalue(), 32)
    assert whole.min() == 0 and whole.max() == 255


def test_a_dicom_s_patient_and_study_are_read_from_its_header_alone(monkeypatch):
    monkeypatch.setattr(images, "_decode_dicom", lambda *a: pytest.fail("pixels decoded"))
    assert dicom_identity(_dicom_bytes(PatientID=" P-7 ", StudyInstanceUID="1.2.3")) == ("P-7", "1.2.3")
    assert dicom_identity(_dicom_bytes(PatientID=""))[0] == ""
    assert dicom_identity((SAMPLES / "00000001_000.png").read_bytes()) == ("", "")
    with pytest.raises(ImageTooLargeError):
        dicom_identity(hostile.deflated_dicom_bomb(DICOM.read_bytes(), 2**30), GATEWAY)
