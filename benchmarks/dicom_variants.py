"""One real radiograph in every transfer syntax a PACS stores, for the transfer-syntax tests and
`make bench-decode` (benchmarks/decode_speed.py).

The uncompressed images every variant starts from (`natives`) are made from the SIIM sample DICOM
(../shared/data/cxr_samples): its 8-bit pixels; a 16-bit CR with 12 bits stored made from them
(scaled and smoothed, so every bit is used), MONOCHROME2 and MONOCHROME1; an RGB radiograph (TBX11K)
for the YBR JPEG; and a two-frame CR. Each variant is then written by Debian's dcmtk (dcmconv,
dcmcrle, dcmcjpeg, dcmcjpls), as a PACS or modality would write it, except JPEG 2000, which dcmtk
does not write: pydicom's `compress` with pylibjpeg-openjpeg's encoder (OpenJPEG) writes it.

Lossless variants decode to exactly the native pixels; lossy ones within their Tolerance.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

SAMPLES = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "cxr_samples"
SAMPLE_DICOM = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
RGB_SAMPLE = SAMPLES / "h0001.png"  # TBX11K: a chest radiograph stored as RGB
DCMTK = ("dcmconv", "dcmcrle", "dcmcjpeg", "dcmcjpls")
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
TWELVE_BITS = 4095
J2K_RATIO = 10  # the lossy JPEG 2000's compression ratio (a PACS's "lossy, diagnostic" is about 10:1)
JPEG_LS_NEAR = 2  # dcmcjpls's default NEAR: no decoded sample is further than this from the original


@dataclass(frozen=True)
class Tolerance:
    """How far a lossy variant's decoded samples may be from the native ones, as fractions of the full
    range the bits stored hold (255 at 8 bits, 4095 at 12): the largest difference and the mean one."""
    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class Variant:
    syntax: str  # the transfer syntax UID the variant is written in
    command: tuple[str, ...] = ()  # the dcmtk command line before input and output; () for pydicom's encoder
    tolerance: Tolerance | None = None  # None: lossless, the decoded pixels equal the native ones
    options: tuple[tuple[str, object], ...] = ()  # pydicom's encoder's options


# The same fractions bound the decoded uint8 image against the native's (of 255). Measured worst, on the
# natives here: JPEG at quality 90 (dcmcjpeg's default) 0.039 / 0.0044 (the YBR 4:2:2 RGB), JPEG 2000 at
# 10:1 0.020 / 0.0018, JPEG-LS at NEAR 2 exactly NEAR (as the standard bounds it) / 0.0044.
JPEG_TOLERANCE = Tolerance(max_abs=0.06, mean_abs=0.01)
J2K_TOLERANCE = Tolerance(max_abs=0.04, mean_abs=0.004)
JPEG_LS_TOLERANCE = Tolerance(max_abs=JPEG_LS_NEAR / 255, mean_abs=JPEG_LS_NEAR / 255)
U = pydicom.uid
VARIANTS = {
    "explicit-le": Variant(U.ExplicitVRLittleEndian, ("dcmconv", "+te")),
    "implicit-le": Variant(U.ImplicitVRLittleEndian, ("dcmconv", "+ti")),
    "big-endian": Variant(U.ExplicitVRBigEndian, ("dcmconv", "+tb")),
    "deflated": Variant(U.DeflatedExplicitVRLittleEndian, ("dcmconv", "+td")),
    "rle": Variant(U.RLELossless, ("dcmcrle",)),
    "jpeg-baseline": Variant(U.JPEGBaseline8Bit, ("dcmcjpeg", "+eb", "+un"), JPEG_TOLERANCE),
    "jpeg-extended": Variant(U.JPEGExtended12Bit, ("dcmcjpeg", "+ee", "+un"), JPEG_TOLERANCE),
    "jpeg-lossless-p14": Variant(U.JPEGLossless, ("dcmcjpeg", "+el")),  # selection value 6, dcmcjpeg's default
    "jpeg-lossless-sv1": Variant(U.JPEGLosslessSV1, ("dcmcjpeg", "+e1")),
    "jpeg-ls-lossless": Variant(U.JPEGLSLossless, ("dcmcjpls", "+el")),
    "jpeg-ls-near-lossless": Variant(U.JPEGLSNearLossless, ("dcmcjpls", "+en", "+md", str(JPEG_LS_NEAR), "+un"),
                                     JPEG_LS_TOLERANCE),
    "jpeg-2000-lossless": Variant(U.JPEG2000Lossless),
    "jpeg-2000": Variant(U.JPEG2000, tolerance=J2K_TOLERANCE, options=(("j2k_cr", [J2K_RATIO]),)),
}
GREY = tuple(VARIANTS)
# What each native is written in. 12-bit JPEG Extended is in the matrix, but refused (cxr.transfer_syntaxes):
# its pixels are compared nowhere. Baseline JPEG holds 8 bits only.
MATRIX = {
    "grey8": GREY,
    "grey12": tuple(v for v in GREY if v != "jpeg-baseline"),
    "grey12-mono1": tuple(v for v in GREY if v != "jpeg-baseline"),
    "rgb8": ("explicit-le", "rle", "jpeg-baseline"),  # JPEG baseline RGB is written YBR_FULL_422
    "multiframe": ("explicit-le", "rle", "jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg-2000-lossless"),
}
REFUSED = {("grey12", "jpeg-extended"), ("grey12-mono1", "jpeg-extended")}


def missing() -> str:
    """Why the variants cannot be made here, or ''."""
    absent = [tool for tool in DCMTK if shutil.which(tool) is None]
    if absent:
        return f"dcmtk is not installed ({', '.join(absent)} missing): apt-get install dcmtk"
    return ""


def _sample() -> tuple[pydicom.Dataset, np.ndarray]:
    dataset = pydicom.dcmread(SAMPLE_DICOM)
    return dataset, dataset.pixel_array


def _twelve_bit(grey: np.ndarray, side: int) -> np.ndarray:
    """8-bit grey -> a 12-bit detector's values at side x side: scaled, resized (bicubic) and smoothed
    (a 2 x 2 mean), so the low bits vary as a real detector's do."""
    values = np.asarray(Image.fromarray(grey.astype(np.float32) * (TWELVE_BITS / 255)).resize(
        (side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    smooth = (values + np.roll(values, 1, 0) + np.roll(values, 1, 1) + np.roll(values, (1, 1), (0, 1))) / 4
    return np.clip(np.round(smooth), 0, TWELVE_BITS).astype(np.uint16)


def _native(pixels: np.ndarray, frames: int = 1, bits_stored: int = 0, **attributes) -> pydicom.Dataset:
    """The sample's header over `pixels` ([rows, columns], [rows, columns, 3] or [frames, rows, columns]),
    uncompressed."""
    dataset = pydicom.dcmread(SAMPLE_DICOM, stop_before_pixels=True)
    dataset.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
    for key in ("LossyImageCompression", "LossyImageCompressionMethod"):
        dataset.pop(key, None)
    dataset.Rows, dataset.Columns = pixels.shape[1:3] if frames > 1 else pixels.shape[:2]
    dataset.BitsAllocated = 8 * pixels.itemsize
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit, dataset.PixelRepresentation = dataset.BitsStored - 1, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.PixelData = pixels.tobytes()
    dataset["PixelData"].VR = "OW" if dataset.BitsAllocated > 8 else "OB"
    return dataset


def natives(side: int = 0) -> dict[str, pydicom.Dataset]:
    """The uncompressed images of MATRIX, at side x side (0: the sample's own 1024 x 1024; the RGB
    radiograph keeps its 512 x 512)."""
    grey = pydicom.dcmread(SAMPLE_DICOM).pixel_array
    if side and side != grey.shape[0]:
        grey = np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BICUBIC))
    twelve = _twelve_bit(grey, grey.shape[0])
    cr = dict(SOPClassUID=CR_STORAGE, bits_stored=12)
    rgb = np.asarray(Image.open(RGB_SAMPLE).convert("RGB"))
    return {
        "grey8": _native(grey),
        "grey12": _native(twelve, **cr),
        "grey12-mono1": _native(TWELVE_BITS - twelve, PhotometricInterpretation="MONOCHROME1", **cr),
        "rgb8": _native(rgb, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0),
        "multiframe": _native(np.stack([twelve, twelve[:, ::-1]]), frames=2, **cr),
    }


def write(dataset: pydicom.Dataset, path: Path) -> Path:
    """`dataset` as a Part-10 file with a SOP Instance UID of its own (a PACS keeps one instance per UID)."""
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.save_as(path, enforce_file_format=True)
    return path


def make(native: pydicom.Dataset, name: str, path: Path) -> Path:
    """`native` written in VARIANTS[name] at `path`, with a SOP Instance UID of its own."""
    variant = VARIANTS[name]
    if not variant.command:
        encoded = copy.deepcopy(native)  # compress() changes the dataset it is given
        encoded.compress(variant.syntax, encoding_plugin="pylibjpeg", **dict(variant.options))
        return write(encoded, path)
    source = write(native, path.with_name(path.stem + "-native.dcm"))
    subprocess.run([*variant.command, "--quiet", str(source), str(path)], check=True, capture_output=True, timeout=120)
    source.unlink()
    if pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID != variant.syntax:
        raise RuntimeError(f"{variant.command[0]} did not write {name} ({variant.syntax})")
    return path


def matrix(folder: Path, side: int = 0) -> dict[tuple[str, str], Path]:
    """Every (native, variant) of MATRIX as a file in `folder`, and each native's own as (native, "native")."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for native_name, native in natives(side).items():
        made[native_name, "native"] = write(native, folder / f"{native_name}.dcm")
        for name in MATRIX[native_name]:
            made[native_name, name] = make(native, name, folder / f"{native_name}-{name}.dcm")
    return made


def not_comparable() -> dict[str, pydicom.Dataset]:
    """DICOM objects that hold no chest image to compare (cxr.dicom_content), named by what they are: a
    structured report, a presentation state, a key object selection (headers, no pixels), raw detector
    data (FOR PROCESSING) and a knee, both with the sample's pixels."""
    made = {}
    for name, modality, sop_class in (("sr", "SR", U.ComprehensiveSRStorage),
                                      ("pr", "PR", U.GrayscaleSoftcopyPresentationStateStorage),
                                      ("ko", "KO", U.KeyObjectSelectionDocumentStorage)):
        header = pydicom.dcmread(SAMPLE_DICOM, stop_before_pixels=True)
        header.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
        for element in [e for e in header if e.tag.group == 0x0028]:
            del header[element.tag]
        header.Modality, header.SOPClassUID = modality, sop_class
        header.file_meta.MediaStorageSOPClassUID = sop_class
        header.SeriesInstanceUID = generate_uid()
        made[name] = header
    grey = pydicom.dcmread(SAMPLE_DICOM).pixel_array
    made["for-processing"] = _native(grey, Modality="DX", PresentationIntentType="FOR PROCESSING",
                                     SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1.1")
    made["knee"] = _native(grey, BodyPartExamined="KNEE")
    return made
