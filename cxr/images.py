"""Image bytes as hospitals send them (PNG 8/16-bit, JPEG, DICOM) -> uint8 RGB at the model's size.

DICOM pixel data goes through the modality and VOI LUTs (or the window in the header), and
MONOCHROME1 is inverted so bone is bright as in every other format. More than 8 bits per pixel
is windowed to the image's own range. The whole image is resized to size x size (no crop: a
crop can cut off a costophrenic angle). The gateway, the index builder and training all decode
through here, so a query is prepared exactly as the archive was.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CxrError

DICOM_MAGIC_OFFSET = 128
MAX_PIXELS = 100_000_000  # PIL's decompression-bomb guard, raised for large detector images


class InvalidImageError(CxrError, ValueError):
    """The bytes are not an image we can read."""


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"

def decode(data: bytes) -> Image.Image:
    """An 8-bit grayscale or RGB PIL image from PNG, JPEG or DICOM bytes."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes): send PNG, JPEG or DICOM bytes")
    if is_dicom(data):
        return _decode_dicom(data)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"the {len(data)} bytes starting {data[:8]!r} are not a PNG, JPEG or DICOM image: send the file's "
            "bytes as they are (DICOM as Part 10, with the DICM preamble)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"the image is damaged or truncated ({len(data)} bytes): {exc}") from exc
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64)))
    return image


def _decode_dicom(data: bytes) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise InvalidImageError(f"could not read the DICOM pixel data: {exc}") from exc
    if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame: the first frame
    if getattr(dataset, "SamplesPerPixel", 1) == 3:
        return Image.fromarray(_to_uint8(pixels.astype(np.float64))).convert("RGB")
    values = apply_modality_lut(pixels, dataset)
    values = apply_voi_lut(values, dataset) if "WindowCenter" in dataset or "VOILUTSequence" in dataset else values
    grey = _to_uint8(np.asarray(values, dtype=np.float64))
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """uint8 [size, size, 3], ready for the image tower."""
    return to_pixels(decode(data), size)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: grayscale becomes RGB, then a bicubic resize of the whole image."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] from image files PIL can read (PNG, JPEG)."""
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(to_pixels(image, size))
    return np.stack(batch)
