"""Image bytes as hospitals send them (PNG 8/16-bit, JPEG, DICOM) -> uint8 RGB at the model's size.

DICOM pixel data goes through the modality and VOI LUTs (or the window in the header), and
MONOCHROME1 is inverted so bone is bright as in every other format. More than 8 bits per pixel
is windowed to the image's own range; 8-bit data without a window are kept as they are (as a
PNG's). The whole image is resized to size x size (no crop: a crop can cut off a costophrenic
angle). The gateway, the index builder and training all decode
through here, so a query is prepared exactly as the archive was.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CxrError

DICOM_MAGIC_OFFSET = 128
DEFAULT_MAX_PIXELS = 100_000_000  # archives read by the indexer and trainer; the gateway sets its own
FORMATS = ("PNG", "JPEG")  # what PIL may open: no TIFF, GIF, BMP, ... from the network
UNIT_MAX = 65535
# PIL refuses to open images over twice this (DecompressionBombError); below that, our own budget
# decides, with a message naming the size. Set once here: PIL keeps it as a module global.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # our budget decides, and says so


class InvalidImageError(CxrError, ValueError):
    """The bytes are not an image we can read."""


class ImageTooLargeError(InvalidImageError):
    """The header promises more pixels than the budget allows; nothing was decoded."""


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def check_budget(pixels: int, shape: str, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise ImageTooLargeError(f"the image is {shape} = {pixels / 1e6:.1f} megapixels; the limit is "
                                 f"{max_pixels / 1e6:.1f} megapixels (max_image_pixels): send a smaller image")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An 8-bit grayscale or RGB PIL image from PNG, JPEG or DICOM bytes. The size in the header is
    checked against `max_pixels` before any pixel is decoded."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes): send PNG, JPEG or DICOM bytes")
    if is_dicom(data):
        return _decode_dicom(data, max_pixels)
    image = _open(data, max_pixels)  # reads the header only
    check_budget(image.width * image.height, f"{image.width} x {image.height}", max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image is damaged or truncated ({len(data)} bytes): {exc}") from exc
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)))
    return image


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own guard, far above any budget we allow
        raise ImageTooLargeError(f"the image header claims a decompression bomb ({exc}); the limit is "
                                 f"{max_pixels / 1e6:.1f} megapixels (max_image_pixels)") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"the {len(data)} bytes starting {data[:8]!r} are not a PNG, JPEG or DICOM image: send the file's "
            "bytes as they are (DICOM as Part 10, with the DICM preamble)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image is damaged or truncated ({len(data)} bytes): {exc}") from exc


def _dicom_header(data: bytes):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise InvalidImageError(f"could not read the DICOM header: {exc}") from exc


def _check_dicom_budget(dataset, max_pixels: int) -> int:
    """The number of frames, once the header's size is checked against the budget."""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        bits = int(dataset.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidImageError(f"the DICOM header lacks a valid Rows, Columns or BitsAllocated: {exc}") from exc
    if min(rows, columns, frames) < 1 or bits not in (1, 8, 16, 32, 64):
        raise InvalidImageError(f"the DICOM header describes no image ({rows} x {columns} pixels, {frames} frames, "
                                f"{bits} bits allocated)")
    check_budget(rows * columns * frames, f"{rows} x {columns} pixels x {frames} frame(s) at {bits} bits", max_pixels)
    return frames


def _decode_dicom(data: bytes, max_pixels: int) -> Image.Image:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    dataset = _dicom_header(data)
    frames = _check_dicom_budget(dataset, max_pixels)
    try:
        pixels = pixel_array(dataset, index=0 if frames > 1 else None)  # multi-frame: the first frame only
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise InvalidImageError(f"could not read the DICOM pixel data: {exc}") from exc
    if getattr(dataset, "SamplesPerPixel", 1) == 3:
        return Image.fromarray(_to_uint8(pixels)).convert("RGB")
    values = apply_modality_lut(pixels, dataset)
    windowed = "WindowCenter" in dataset or "VOILUTSequence" in dataset
    values = np.asarray(apply_voi_lut(values, dataset) if windowed else values)
    grey = values.astype(np.uint8) if not windowed and _display_ready(values, dataset) else _to_uint8(values)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey)


def _display_ready(values: np.ndarray, dataset) -> bool:
    """8-bit data with no window are display values already, as in a PNG: stretching them would make
    a DICOM of a PNG's pixels (a secondary capture) decode to another image than the PNG."""
    return int(getattr(dataset, "BitsStored", 16)) <= 8 and values.min() >= 0 and values.max() <= 255


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """The image's own range stretched to 0..255. Unsigned 16-bit data goes through a 64K lookup
    table (the same numbers as the float path, without float copies of a large image)."""
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scale = 255.0 / (float(high) - float(low))
    if values.dtype.kind in "ui" and low >= 0 and high <= UNIT_MAX:
        table = np.round((np.arange(int(high) + 1, dtype=np.float64) - float(low)) * scale)
        return np.clip(table, 0, 255).astype(np.uint8)[values]
    return np.round((values.astype(np.float64) - float(low)) * scale).astype(np.uint8)


def preprocess(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 [size, size, 3], ready for the image tower."""
    return to_pixels(decode(data, max_pixels), size)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a bicubic resize of the whole image, in RGB. Grayscale is resized
    before it is made RGB (the same numbers, a third of the memory)."""
    if image.mode != "L":
        image = image.convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC).convert("RGB"), dtype=np.uint8)


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] from image files PIL can read (PNG, JPEG)."""
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(to_pixels(image, size))
    return np.stack(batch)
