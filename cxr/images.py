"""Image bytes as hospitals send them (PNG 8/16-bit, JPEG, DICOM) -> uint8 RGB at the model's size.

DICOM pixel data is decoded by the one pydicom plugin cxr.transfer_syntaxes names for its transfer
syntax (native, deflated, big endian, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000), goes
through the modality and VOI LUTs (or the window in the header), and MONOCHROME1 is inverted so bone
is bright as in every other format. More than 8 bits per pixel is windowed to the image's own range;
8-bit data without a window are kept as they are (as a PNG's). A DICOM that holds no chest image to
compare (a report, raw detector data, another body part: cxr.dicom_content) is refused with the
reason before any of that. The whole image is resized to size x size (no crop: a crop can cut off a
costophrenic angle), unless a query asks for a Region of it: then that region, cut from the decoded and
windowed image, is resized instead. The gateway, the index builder and training all decode through here, so a query
is prepared exactly as the archive was.

Uploads are hostile until shown otherwise. Before any pixel is decoded, the size the file declares
is checked against ImageLimits (pixels, longest side, aspect), and so is what the decoder will really
decode: a DICOM's compressed frame (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ) must declare the header's
Rows x Columns and no more bits per sample than BitsAllocated, a JPEG must hold at least
the coded bytes its declared size needs, and a deflated DICOM must not inflate past what the pixel
limit allows. A PixelBudget bounds the pixels being decoded at once across threads. Error messages
name the limit or field and the remedy, never bytes of the upload or a library's message (the cause
stays chained for the log).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr import codestreams
from cxr.dicom_content import not_comparable_reason
from cxr.errors import InvalidArgumentError, ResourceExhaustedError
from cxr.transfer_syntaxes import DECODED, FRAMED, JPEG, JPEG_2000, JPEG_LS, REMEDY, Syntax

DICOM_MAGIC_OFFSET = 128
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 100_000_000  # archives read by the indexer and trainer; the gateway sets its own
FORMATS = ("PNG", "JPEG")  # what PIL may open: no TIFF, GIF, BMP, ... from the network
# A complete Huffman-coded JPEG spends at least one bit on every 8 x 8 block, so it holds at least a
# byte per 512 pixels (flat images, coded progressive, hold ~1 per 250; the samples 1 per 10). Less
# is a truncated file or a false header, which libjpeg would fill with grey without a word.
JPEG_PIXELS_PER_CODED_BYTE = 512
# A deflated DICOM dataset may inflate to the pixel limit at this many bytes a pixel (16-bit grey
# needs 2, 8-bit RGB 3) plus this much for every other element.
DEFLATED_BYTES_PER_PIXEL = 4
DEFLATED_OTHER_BYTES = 16 * 2**20
INFLATE_STEP = 2**16  # compressed bytes fed to zlib at a time while the inflated size is counted
# What a decoder written in Rust (pylibjpeg-rle) raises when damaged data trips it: pyo3's PanicException,
# a BaseException, which no `except Exception` sees. It is caught by name: pyo3 makes it at run time.
RUST_PANIC = "PanicException"
# PIL refuses to open images over twice this (DecompressionBombError); below that, our own budget
# decides, with a message naming the size. Set once here: PIL keeps it as a module global.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # our budget decides, and says so


class InvalidImageError(InvalidArgumentError, ValueError):
    """The bytes are not an image we can read."""


class NotComparableError(InvalidImageError):
    """A DICOM that holds no chest image a clinician would compare (cxr.dicom_content); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(f"the DICOM is {reason}: search with a chest radiograph as it is shown to a reader")
        self.reason = reason


class ImageTooLargeError(InvalidImageError):
    """The header declares more than the limits allow; nothing was decoded."""


class DecodeBusyError(ResourceExhaustedError):
    """Other images being decoded hold the pixel budget; retry later."""


@dataclass(frozen=True)
class ImageLimits:
    """What an image's header may declare, checked before any pixel is decoded. The gateway builds
    its own from settings (ImageLimits.of); the indexer and trainer read archives with the defaults."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # every frame of a DICOM counted (max_image_pixels)
    max_side: int = 20_000  # pixels (max_image_side)
    max_aspect: float = 8.0  # longer side over shorter side (max_image_aspect)

    @classmethod
    def of(cls, settings) -> ImageLimits:
        """From cxr.settings.Settings."""
        return cls(settings.max_image_pixels, settings.max_image_side, settings.max_image_aspect)

    @property
    def max_inflated_bytes(self) -> int:
        return self.max_pixels * DEFLATED_BYTES_PER_PIXEL + DEFLATED_OTHER_BYTES

    def check(self, width: int, height: int, frames: int = 1) -> None:
        if min(width, height, frames) < 1:
            raise InvalidImageError("the image's header declares no pixels (a width, height or frame count of 0): "
                                    "send a complete image")
        if width * height * frames > self.max_pixels:
            raise ImageTooLargeError(
                f"the image's header declares more pixels than max_image_pixels allows ({self.max_pixels / 1e6:.1f} "
                "megapixels, every frame of a DICOM counted): send a smaller image")
        if max(width, height) > self.max_side:
            raise ImageTooLargeError(f"a side of the image is longer than max_image_side allows ({self.max_side} "
                                     "pixels): send a smaller image")
        if max(width, height) > self.max_aspect * min(width, height):
            raise ImageTooLargeError(
                f"the image is more elongated than max_image_aspect allows (1:{self.max_aspect:g}; stitched spine "
                "and long-leg radiographs reach about 1:4): send the radiograph as the modality produced it")


ARCHIVE_LIMITS = ImageLimits()


class PixelBudget:
    """Pixels being decoded at once, across the decoding threads, so that several large images at
    once cannot add up to more memory than `max_pixels` worth. A decode that would pass it waits for
    others to finish (an image larger than the budget waits until it is alone), until `deadline`
    (time.monotonic()); then it is refused with DecodeBusyError."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels
        self.in_use = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, deadline: float | None = None):
        with self._changed:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._changed.wait_for(lambda: not self.in_use or self.in_use + pixels <= self.max_pixels, wait):
                raise DecodeBusyError(f"other images held the gateway's decoding budget (max_decoding_pixels, "
                                      f"{self.max_pixels / 1e6:.1f} megapixels) until this call's deadline: retry "
                                      "with backoff")
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


@dataclass(frozen=True)
class _Opened:
    """An image whose header passed the limits: how many pixels it declares, and how to decode it."""

    pixels: int
    decode: Callable[[], Image.Image]


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10: DICM after the preamble (a PNG or JPEG is none, whatever its byte 128 holds)."""
    if data.startswith(PNG_SIGNATURE) or data.startswith(codestreams.JPEG_SOI):
        return False
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode(data: bytes, limits: ImageLimits = ARCHIVE_LIMITS) -> Image.Image:
    """An 8-bit grayscale or RGB PIL image from PNG, JPEG or DICOM bytes. The header is checked
    against `limits` before any pixel is decoded."""
    return _open(data, limits).decode()


class InvalidRegionError(InvalidArgumentError, ValueError):
    """A region of interest that is not a box inside the image."""


@dataclass(frozen=True)
class Region:
    """A box of an image in fractions of its width and height, from the top left corner."""

    x: float
    y: float
    width: float
    height: float

    # float32 on the wire: 0.7 + 0.3 may come to 1.0000001
    SLACK = 1e-6

    def __post_init__(self):
        values = (self.x, self.y, self.width, self.height)
        if not all(0.0 <= v <= 1.0 for v in values) or self.width <= 0 or self.height <= 0:
            raise InvalidRegionError("a region's x, y, width and height are fractions of the image (0 to 1) from "
                                     "its top left corner, with width and height above 0")
        if self.x + self.width > 1 + self.SLACK or self.y + self.height > 1 + self.SLACK:
            raise InvalidRegionError("the region reaches past the image: x + width and y + height must be at most 1")

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of a width x height image: at least one pixel each way."""
        left, top = min(int(self.x * width), width - 1), min(int(self.y * height), height - 1)
        right = min(max(left + 1, round((self.x + self.width) * width)), width)
        bottom = min(max(top + 1, round((self.y + self.height) * height)), height)
        return left, top, right, bottom


def preprocess(data: bytes, size: int, limits: ImageLimits = ARCHIVE_LIMITS, budget: PixelBudget | None = None,
               deadline: float | None = None, region: Region | None = None) -> np.ndarray:
    """uint8 [size, size, 3], ready for the image tower; the decode holds its pixels in `budget`, waiting
    for them until `deadline` (time.monotonic()) at most. With a `region`, only that box of the decoded,
    windowed image is resized to size x size."""
    opened = _open(data, limits)
    with budget.hold(opened.pixels, deadline) if budget else contextlib.nullcontext():
        image = opened.decode()
        if region is not None:
            image = image.crop(region.box(*image.size))
        return to_pixels(image, size)


def dicom_identity(data: bytes, limits: ImageLimits = ARCHIVE_LIMITS) -> tuple[str, str]:
    """A DICOM's PatientID and StudyInstanceUID ("" where absent), read from its header: no pixel is decoded.
    ("", "") for a PNG or JPEG. Patient data: the caller uses them to exclude, never shows them."""
    if not is_dicom(data):
        return "", ""
    _import_pydicom()
    _check_inflation(data, limits)
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                  specific_tags=["PatientID", "StudyInstanceUID"])
        return str(dataset.get("PatientID") or "").strip(), str(dataset.get("StudyInstanceUID") or "").strip()
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise _unreadable_dicom() from exc


def _open(data: bytes, limits: ImageLimits) -> _Opened:
    if not data:
        raise InvalidImageError("the image is empty (0 bytes): send PNG, JPEG or DICOM bytes")
    return _open_dicom(data, limits) if is_dicom(data) else _open_pil(data, limits)


def _open_pil(data: bytes, limits: ImageLimits) -> _Opened:
    image = _pil_header(data, limits)
    limits.check(image.width, image.height)
    if data.startswith(codestreams.JPEG_SOI):  # JPEG, or MPO (JPEGs one after another): frame 0 is decoded
        try:
            coded = codestreams.jpeg_header(data).coded_bytes
        except codestreams.CodestreamError as exc:
            raise _damaged() from exc
        _check_coded_bytes(coded, image.width * image.height, "the JPEG")
    return _Opened(image.width * image.height, lambda: _load(image))


def _pil_header(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image with its header read and nothing decoded."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own guard, far above any budget we allow
        raise ImageTooLargeError(f"the image's header declares more pixels than max_image_pixels allows "
                                 f"({limits.max_pixels / 1e6:.1f} megapixels): send a smaller image") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("the image is not a PNG, JPEG or DICOM file: send the file's bytes as they are "
                                "(DICOM as Part 10, with the DICM preamble)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _damaged() from exc


def _damaged() -> InvalidImageError:
    return InvalidImageError("the image is damaged or truncated: send the original file")


def _check_coded_bytes(coded: int, pixels: int, what: str) -> None:
    if coded * JPEG_PIXELS_PER_CODED_BYTE < pixels:
        raise InvalidImageError(f"{what} holds less coded data than the size its header declares needs (a "
                                f"byte per {JPEG_PIXELS_PER_CODED_BYTE} pixels at least): the file is truncated or its "
                                "header is false; send the original file")


def _load(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _damaged() from exc
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)))
    return image


_PYDICOM_IMPORT = threading.Lock()


def _import_pydicom() -> None:
    """pydicom, imported whole once: it is needed only for DICOM (and installed only with the `serve`
    extra), and decode threads importing its modules at the same moment meet a half-initialised
    package (ImportError, seen under `make fuzz`). Later imports in this module are lookups."""
    with _PYDICOM_IMPORT:
        import pydicom.encaps  # noqa: F401
        import pydicom.filereader  # noqa: F401
        import pydicom.pixels  # noqa: F401
        import pydicom.uid  # noqa: F401


def _open_dicom(data: bytes, limits: ImageLimits) -> _Opened:
    _import_pydicom()
    _check_inflation(data, limits)
    dataset = _read_dicom(data)
    if reason := not_comparable_reason(dataset):
        raise NotComparableError(reason)
    syntax = _syntax(dataset)
    rows, columns, frames, samples = geometry = _dicom_geometry(dataset)
    limits.check(columns, rows, frames)
    _check_first_frame(dataset, syntax, geometry)
    return _Opened(rows * columns * frames, lambda: _decode_dicom(dataset, syntax, frames, samples))


def _syntax(dataset) -> Syntax | None:
    """The file meta's transfer syntax, if it is one decoded here; None where the file meta names none
    (pydicom then reads the dataset as it finds it, and its pixels as native)."""
    uid = dataset.file_meta.get("TransferSyntaxUID")
    if uid is None:
        return None
    if str(uid) not in DECODED:
        raise InvalidImageError(f"the DICOM's transfer syntax is not one this service decodes: {REMEDY}")
    return DECODED[str(uid)]


def _check_inflation(data: bytes, limits: ImageLimits) -> None:
    """A deflated dataset is inflated whole inside pydicom.dcmread: count its inflated size first, a
    step at a time (nothing kept), and refuse it past limits.max_inflated_bytes."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    syntax, body = _transfer_syntax(data)
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    try:
        inflated = _inflated_size(memoryview(data)[body:], limits.max_inflated_bytes)
    except zlib.error as exc:
        raise InvalidImageError("the deflated DICOM dataset does not inflate: send the original file") from exc
    if inflated > limits.max_inflated_bytes:
        raise ImageTooLargeError(
            "the deflated DICOM dataset inflates past what max_image_pixels allows "
            f"({limits.max_inflated_bytes / 2**20:.0f} MB: {DEFLATED_BYTES_PER_PIXEL} bytes a pixel and "
            f"{DEFLATED_OTHER_BYTES // 2**20} MB of other elements): send a smaller image")


def _inflated_size(stream: memoryview, bound: int) -> int:
    """The raw deflate stream's inflated size, counted until it passes `bound`; nothing is kept. Bytes
    after the end of the stream (a DICOM pads it to even length) are not inflated."""
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    for start in range(0, len(stream), INFLATE_STEP):
        pending = stream[start:start + INFLATE_STEP]
        while pending and not inflater.eof and inflated <= bound:
            inflated += len(inflater.decompress(pending, INFLATE_STEP))
            pending = inflater.unconsumed_tail
        if inflater.eof or inflated > bound:
            break
    return inflated


def _transfer_syntax(data: bytes) -> tuple[str, int]:
    """The file meta's transfer syntax and where the dataset after it starts, read as dcmread reads them."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    source = io.BytesIO(data)
    try:
        read_preamble(source, False)
        meta = _read_file_meta_info(source)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise _unreadable_dicom() from exc
    return str(meta.get("TransferSyntaxUID", "")), source.tell()


def _unreadable_dicom() -> InvalidImageError:
    return InvalidImageError("the DICOM file could not be parsed: send it as Part 10 (with the DICM preamble), "
                             "as the PACS stores it")


def _read_dicom(data: bytes):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise _unreadable_dicom() from exc


def _dicom_geometry(dataset) -> tuple[int, int, int, int]:
    """Rows, columns, frames and samples per pixel, checked to describe an image."""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        bits, samples = int(dataset.BitsAllocated), int(getattr(dataset, "SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise _no_geometry() from exc
    if bits not in (1, 8, 16, 32, 64) or samples not in (1, 3):
        raise _no_geometry()
    return rows, columns, frames, samples


def _no_geometry() -> InvalidImageError:
    return InvalidImageError("the DICOM header lacks a valid Rows, Columns, NumberOfFrames, BitsAllocated or "
                             "SamplesPerPixel: send the original file")


def _check_first_frame(dataset, syntax: Syntax | None, geometry: tuple[int, int, int, int]) -> None:
    """The frame that will be decoded must declare the header's size: the decoder believes the frame."""
    from pydicom.encaps import generate_frames

    if syntax is None or syntax.codestream not in FRAMED:
        return  # native and RLE data are decoded into Rows x Columns, whatever they hold
    rows, columns, frames, samples = geometry
    read = codestreams.j2k_header if syntax.codestream == JPEG_2000 else codestreams.jpeg_header
    try:
        header = read(next(generate_frames(dataset.PixelData, number_of_frames=frames)))
    except Exception as exc:  # noqa: BLE001 - pydicom's and our own parsers fail in many ways on bad bytes
        raise InvalidImageError(f"the DICOM's first compressed frame has no readable {syntax.name} header: send the "
                                "original file") from exc
    if header.jpeg_ls != (syntax.codestream == JPEG_LS):
        raise InvalidImageError(f"the DICOM's first compressed frame is not {syntax.name}, as its transfer syntax "
                                "says: send the original file")
    if (header.width, header.height, header.components) != (columns, rows, samples):
        raise InvalidImageError("the DICOM's first compressed frame declares another size or component count than "
                                "the header's Rows, Columns and SamplesPerPixel: send the original file")
    if header.precision > syntax.max_precision:
        raise InvalidImageError(
            f"the DICOM is {syntax.name} with {header.precision}-bit samples, which this service has no decoder for "
            f"(only {syntax.max_precision}-bit): {REMEDY}")
    if header.precision > int(dataset.BitsAllocated):
        raise InvalidImageError("the DICOM's first compressed frame declares more bits per sample than the header's "
                                "BitsAllocated: send the original file")
    if syntax.codestream == JPEG:
        _check_coded_bytes(header.coded_bytes, rows * columns, "the DICOM's JPEG frame")


def _decode_dicom(dataset, syntax: Syntax | None, frames: int, samples: int) -> Image.Image:
    from pydicom.pixels import pixel_array

    try:  # multi-frame: the first frame only
        pixels = pixel_array(dataset, index=0 if frames > 1 else None, decoding_plugin=syntax.plugin if syntax else "")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise _undecodable(syntax) from exc
    except BaseException as exc:
        if type(exc).__name__ != RUST_PANIC:
            raise
        raise _undecodable(syntax) from exc
    if samples == 3:
        return Image.fromarray(_to_uint8(pixels))
    return Image.fromarray(_dicom_grey(pixels, dataset))


def _undecodable(syntax: Syntax | None) -> InvalidImageError:
    what = f"{syntax.name} pixel data" if syntax else "pixel data"
    return InvalidImageError(f"the DICOM's {what} could not be decoded: the file is damaged; send the original file")


def _dicom_grey(pixels: np.ndarray, dataset) -> np.ndarray:
    """Modality LUT, then the VOI LUT or window when the header has one, then 0..255 (inverted for
    MONOCHROME1)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    windowed = "WindowCenter" in dataset or "VOILUTSequence" in dataset
    eight_bit = int(getattr(dataset, "BitsStored", 16)) <= 8
    inverted = getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1"

    def transform(values: np.ndarray) -> np.ndarray:
        values = apply_modality_lut(values, dataset)
        return np.asarray(apply_voi_lut(values, dataset) if windowed else values)

    def display(values: np.ndarray, low, high) -> np.ndarray:
        # 8-bit data with no window are display values already, as in a PNG: stretching them would
        # make a DICOM of a PNG's pixels (a secondary capture) decode to another image than the PNG.
        ready = not windowed and eight_bit and low >= 0 and high <= 255
        grey = values.astype(np.uint8) if ready else _stretch(values, low, high)
        return 255 - grey if inverted else grey

    return _to_uint8(pixels, transform, display)


def _to_uint8(pixels: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] = np.asarray,
              display: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    """uint8 pixels: `display`(transform(pixels), low, high), low and high being the transformed image's own
    range (by default stretched to 0..255). Integer pixels of up to 16 bits go through a table of every
    value they can hold, made with the same functions: the same numbers per pixel, without float copies
    of a large image."""
    display = display or _stretch
    if pixels.dtype.kind not in "ui" or pixels.itemsize > 2:
        values = transform(pixels)
        return display(values, values.min(), values.max())
    unsigned = np.dtype(f"u{pixels.itemsize}")
    index = pixels.view(unsigned)
    with np.errstate(all="ignore"):  # values no pixel holds may overflow a LUT or a cast; no pixel sees them
        values = transform(np.arange(2 ** (8 * pixels.itemsize), dtype=unsigned).view(pixels.dtype))
        present = np.zeros(values.shape[0], dtype=bool)
        present[index] = True
        held = values[present]
        table = display(values, held.min(), held.max())
    return table[index]


def _stretch(values: np.ndarray, low, high) -> np.ndarray:
    """low..high to 0..255 (values outside clipped)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scale = 255.0 / (float(high) - float(low))
    return np.clip(np.round((values.astype(np.float64) - float(low)) * scale), 0, 255).astype(np.uint8)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a bicubic resize of the whole image, in RGB. Grayscale is resized
    before it is made RGB (the same numbers, a third of the memory)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC).convert("RGB"), dtype=np.uint8)


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] from image files PIL can read (PNG, JPEG)."""
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(to_pixels(image, size))
    return np.stack(batch)
