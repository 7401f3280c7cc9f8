"""The DICOM transfer syntaxes this service decodes, and which pydicom plugin decodes each (docs/pacs.md,
"Transfer syntaxes").

One plugin per syntax, named here: pydicom otherwise takes the first installed plugin that can, so
installing a package (GDCM decodes JPEG baseline too) would change the pixels of a query without a
word, and a query would no longer be prepared exactly as the archive was. cxr.images checks a
compressed frame's own header (cxr.codestreams) against the DICOM header before the plugin runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a frame is stored: what cxr.images reads from it before it is decoded.
NATIVE = "native"  # uncompressed: decoded into Rows x Columns, whatever the bytes hold
RLE = "rle"  # the same: RLE segments are decoded into Rows x Columns
JPEG = "jpeg"  # a JPEG codestream (SOFn)
JPEG_LS = "jpeg-ls"  # a JPEG-LS codestream (SOF55)
JPEG_2000 = "jpeg-2000"  # a JPEG 2000 codestream (SIZ), bare or in a JP2 file


@dataclass(frozen=True)
class Syntax:
    name: str
    codestream: str
    plugin: str = ""  # pydicom's decoding plugin; "" for pydicom's own code
    package: str = "pydicom"  # the package the plugin runs (what docs/pacs.md names)
    max_precision: int = 16  # bits per sample the plugin decodes


DECODED = {
    "1.2.840.10008.1.2": Syntax("Implicit VR Little Endian", NATIVE),
    "1.2.840.10008.1.2.1": Syntax("Explicit VR Little Endian", NATIVE),
    "1.2.840.10008.1.2.1.99": Syntax("Deflated Explicit VR Little Endian", NATIVE),
    "1.2.840.10008.1.2.2": Syntax("Explicit VR Big Endian", NATIVE),
    # pylibjpeg-rle, not pydicom's own decoder: that one inflates a segment whole before it looks at its
    # length (an RLE bomb: 64 decoded bytes per coded byte, past any pixel limit) and is 10x slower. This one
    # stops at Rows x Columns; a damaged segment can make it panic (cxr.images catches that).
    "1.2.840.10008.1.2.5": Syntax("RLE Lossless", RLE, "pylibjpeg", "pylibjpeg-rle"),
    # Pillow, as before GDCM was installed: the JPEG baseline archives already indexed keep their vectors.
    "1.2.840.10008.1.2.4.50": Syntax("JPEG Baseline", JPEG, "pillow", "Pillow"),
    # 12-bit samples have no decoder here under a licence that fits (pylibjpeg-libjpeg is GPL-3; pydicom
    # turns GDCM away for them, and GDCM's wheel has no 12-bit libjpeg): 8-bit only.
    "1.2.840.10008.1.2.4.51": Syntax("JPEG Extended", JPEG, "pillow", "Pillow", max_precision=8),
    "1.2.840.10008.1.2.4.57": Syntax("JPEG Lossless (Process 14)", JPEG, "gdcm", "python-gdcm"),
    "1.2.840.10008.1.2.4.70": Syntax("JPEG Lossless SV1", JPEG, "gdcm", "python-gdcm"),
    # GDCM's CharLS, not pyjpegls' (1.4 and 1.5): that one spends ~5 s of CPU on most truncated 1-megapixel
    # frames before it gives up, GDCM 0.02 s.
    "1.2.840.10008.1.2.4.80": Syntax("JPEG-LS Lossless", JPEG_LS, "gdcm", "python-gdcm"),
    "1.2.840.10008.1.2.4.81": Syntax("JPEG-LS Near-Lossless", JPEG_LS, "gdcm", "python-gdcm"),
    "1.2.840.10008.1.2.4.90": Syntax("JPEG 2000 Lossless", JPEG_2000, "pylibjpeg", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.91": Syntax("JPEG 2000", JPEG_2000, "pylibjpeg", "pylibjpeg-openjpeg"),
}
FRAMED = (JPEG, JPEG_LS, JPEG_2000)  # codestreams whose header declares the frame's size
REMEDY = "send it uncompressed, or RLE, JPEG, JPEG Lossless, JPEG-LS or JPEG 2000 compressed"
