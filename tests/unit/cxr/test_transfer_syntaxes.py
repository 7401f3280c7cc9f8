"""Every transfer syntax a PACS stores, from a file through cxr.images (issue 19): lossless ones decode to
exactly the native pixels, lossy ones within benchmarks.dicom_variants' tolerances, each by the plugin
cxr.transfer_syntaxes names; a real compressed frame's own header is checked before its decoder runs."""

import io
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder, pixel_array

from benchmarks.dicom_variants import JPEG_LS_NEAR, MATRIX, REFUSED, VARIANTS, Tolerance
from cxr import codestreams
from cxr.images import ImageLimits, InvalidImageError, decode, preprocess
from cxr.transfer_syntaxes import DECODED, JPEG_2000, JPEG_LS

CASES = [(native, variant) for native, variants in MATRIX.items() for variant in variants
         if (native, variant) not in REFUSED]
COMPRESSED = ["jpeg-lossless-p14", "jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg-ls-near-lossless",
              "jpeg-2000-lossless", "jpeg-2000"]
GATEWAY = ImageLimits(max_pixels=50_000_000)
DAMAGED_FRAMES = 30  # per codec here; ~300 per codec and 8/12-bit were run once (issue 19): none crashed
# A damaged 1-megapixel frame is refused within this (measured: 0.05 s; pyjpegls spent ~5 s on most
# truncated JPEG-LS frames, which is why GDCM decodes JPEG-LS).
SLOWEST_DAMAGED_S = 2.0


def _syntax(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _stored(path) -> np.ndarray:
    """The first frame's stored values, decoded by the plugin cxr.transfer_syntaxes names."""
    dataset = pydicom.dcmread(path)  # not the path: pydicom reads a deflated file's pixels only from a dataset
    return pixel_array(dataset, index=0, decoding_plugin=DECODED[str(dataset.file_meta.TransferSyntaxUID)].plugin)


def _within(got: np.ndarray, expected: np.ndarray, tolerance: Tolerance, full_range: int) -> None:
    error = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    assert got.shape == expected.shape
    assert error.max() <= tolerance.max_abs * full_range, (error.max(), full_range)
    assert error.mean() <= tolerance.mean_abs * full_range, (error.mean(), full_range)


@pytest.fixture
def forbid_decoding(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    return lambda: monkeypatch.setattr(pydicom.pixels, "pixel_array", forbidden)


@pytest.mark.parametrize("native, variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_every_variant_decodes_to_the_native_pixels(dicom_variants, native, variant):
    path, reference = dicom_variants[native, variant], dicom_variants[native, "native"]
    assert _syntax(path) == VARIANTS[variant].syntax
    shown, expected = np.asarray(decode(path.read_bytes())), np.asarray(decode(reference.read_bytes()))
    stored, native_stored = _stored(path), _stored(reference)
    tolerance = VARIANTS[variant].tolerance
    if tolerance is None:
        np.testing.assert_array_equal(stored, native_stored)
        np.testing.assert_array_equal(shown, expected)
        np.testing.assert_array_equal(preprocess(path.read_bytes(), 224), preprocess(reference.read_bytes(), 224))
        return
    bits = int(pydicom.dcmread(reference, stop_before_pixels=True).BitsStored)
    _within(stored, native_stored, tolerance, 2**bits - 1)
    _within(shown, expected, tolerance, 255)
    if variant == "jpeg-ls-near-lossless":  # the standard's own bound, in stored values
        assert np.abs(stored.astype(int) - native_stored.astype(int)).max() <= JPEG_LS_NEAR


def test_a_multi_frame_dicom_shows_its_first_frame(dicom_variants):
    first = np.asarray(decode(dicom_variants["grey12", "native"].read_bytes()))
    for variant in MATRIX["multiframe"]:
        assert pydicom.dcmread(dicom_variants["multiframe", variant], stop_before_pixels=True).NumberOfFrames == 2
        np.testing.assert_array_equal(np.asarray(decode(dicom_variants["multiframe", variant].read_bytes())), first)


def test_the_ybr_jpeg_is_shown_in_colour(dicom_variants):
    path = dicom_variants["rgb8", "jpeg-baseline"]
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "YBR_FULL_422"
    assert decode(path.read_bytes()).mode == "RGB"


@pytest.mark.parametrize("native", ["grey12", "grey12-mono1"])
def test_twelve_bit_jpeg_extended_is_refused_before_decoding_naming_the_syntax_and_the_remedy(
        dicom_variants, forbid_decoding, native):
    data = dicom_variants[native, "jpeg-extended"].read_bytes()
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="JPEG Extended with 12-bit samples") as error:
        preprocess(data, 224, GATEWAY)
    assert "JPEG-LS or JPEG 2000" in str(error.value)


def test_each_syntax_is_decoded_by_the_plugin_the_table_names(dicom_variants, monkeypatch):
    used = {}

    def spying(dataset, **options):
        used[str(dataset.file_meta.TransferSyntaxUID)] = options["decoding_plugin"]
        return pixel_array(dataset, **options)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spying)
    for variant in MATRIX["grey8"]:
        decode(dicom_variants["grey8", variant].read_bytes())
    assert used == {uid: syntax.plugin for uid, syntax in DECODED.items()}


@pytest.mark.parametrize("uid", sorted(DECODED))
def test_the_plugin_of_every_decoded_syntax_is_installed(uid):
    plugin = DECODED[uid].plugin
    assert not plugin or plugin in get_decoder(uid).available_plugins, \
        f"{DECODED[uid].package} is missing: `make setup` installs the serve extra"


def test_the_matrix_covers_every_decoded_syntax():
    assert {variant.syntax for variant in VARIANTS.values()} == set(DECODED)


def _first_frame(path) -> bytes:
    dataset = pydicom.dcmread(path)
    return next(generate_frames(dataset.PixelData, number_of_frames=int(dataset.get("NumberOfFrames", 1) or 1)))


@pytest.mark.parametrize("variant", COMPRESSED)
def test_real_frames_declare_their_size_and_precision(dicom_variants, variant):
    kind = DECODED[VARIANTS[variant].syntax].codestream
    read = codestreams.j2k_header if kind == JPEG_2000 else codestreams.jpeg_header
    for native in ("grey8", "grey12"):
        path = dicom_variants[native, variant]
        header, dataset = read(_first_frame(path)), pydicom.dcmread(path, stop_before_pixels=True)
        assert (header.width, header.height, header.components, header.jpeg_ls) == (1024, 1024, 1, kind == JPEG_LS)
        assert dataset.BitsStored <= header.precision <= dataset.BitsAllocated  # dcmcjpeg's lossless JPEG: 16


def _with(path, **changes) -> bytes:
    dataset = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(dataset, key, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("variant", COMPRESSED)
def test_a_real_frame_larger_than_its_header_is_refused_before_decoding(dicom_variants, forbid_decoding, variant):
    data = _with(dicom_variants["grey12", variant], Rows=512, Columns=512)  # the frame holds 1024 x 1024
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="Rows, Columns and SamplesPerPixel"):
        preprocess(data, 224, GATEWAY)


def test_a_frame_with_more_bits_than_bits_allocated_is_refused_before_decoding(dicom_variants, forbid_decoding):
    data = _with(dicom_variants["grey12", "jpeg-2000-lossless"], BitsAllocated=8, BitsStored=8, HighBit=7)
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="more bits per sample than the header's BitsAllocated"):
        preprocess(data, 224, GATEWAY)


def test_a_jpeg_ls_frame_under_a_jpeg_syntax_is_refused_before_decoding(dicom_variants, forbid_decoding):
    dataset = pydicom.dcmread(dicom_variants["grey8", "jpeg-ls-lossless"])
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    forbid_decoding()
    with pytest.raises(InvalidImageError, match="is not JPEG Lossless SV1, as its transfer syntax says"):
        preprocess(buffer.getvalue(), 224, GATEWAY)


def test_the_decoders_give_the_same_pixels_from_several_threads_at_once(dicom_variants):
    """The gateway decodes on 4 threads: GDCM, CharLS, OpenJPEG and the RLE decoder side by side."""
    paths = [dicom_variants["grey12", v] for v in ("jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg-2000-lossless",
                                                   "rle", "jpeg-lossless-p14")] * 2
    alone = [preprocess(p.read_bytes(), 224) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: preprocess(p.read_bytes(), 224), paths))
    for one, other in zip(alone, together):
        np.testing.assert_array_equal(one, other)


def _damaged(frame: bytes, rng: random.Random) -> bytes:
    """Bit flips, a truncation or an overwritten run: what a bad disk, network or hand makes of a frame."""
    data = bytearray(frame)
    kind = rng.choice(("flips", "truncated", "overwritten"))
    if kind == "flips":
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncated":
        del data[rng.randrange(len(data)):]
    else:
        start = rng.randrange(len(data))
        data[start:start + 64] = rng.randbytes(64)
    return bytes(data)


@pytest.mark.parametrize("variant", COMPRESSED + ["rle", "jpeg-extended"])
def test_a_damaged_frame_of_every_codec_decodes_or_is_refused_never_another_error(dicom_variants, variant):
    """A decoder that crashes or raises what is no Exception (pylibjpeg-rle's Rust panic) would take the
    gateway's worker down or answer INTERNAL, one that dawdles over bad bytes hands out CPU; seeded, so a
    failure can be made again."""
    path = dicom_variants["grey8", variant]
    dataset, rng = pydicom.dcmread(path), random.Random(variant)
    frame = _first_frame(path)
    for _ in range(DAMAGED_FRAMES):
        dataset.PixelData = pydicom.encaps.encapsulate([_damaged(frame, rng)])
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        started = time.perf_counter()
        try:
            preprocess(buffer.getvalue(), 64, GATEWAY)
        except InvalidImageError as error:
            assert "send" in str(error)
        assert time.perf_counter() - started < SLOWEST_DAMAGED_S
