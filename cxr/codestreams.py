"""What a compressed frame's own header declares, read from its bytes before any decoder runs: the
size, components and sample precision in a JPEG SOFn (baseline, extended, progressive, lossless) or
JPEG-LS SOF55 segment, or a JPEG 2000 SIZ segment, and how many entropy-coded bytes a JPEG carries.

A DICOM header's Rows x Columns is only a claim about the frame inside; the decoder decodes what the
frame says. cxr.images compares the two (and the coded bytes against the declared pixels) first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream starts SOC, then SIZ
SOS = 0xDA
SOF55 = 0xF7  # JPEG-LS
# SOF0..SOF15 less DHT (C4), JPG (C8) and DAC (CC), which share the range but are no frame headers.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {SOF55}
STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


class CodestreamError(ValueError):
    """The bytes hold no frame header this module can read."""


@dataclass(frozen=True)
class FrameHeader:
    width: int
    height: int
    components: int
    coded_bytes: int | None = None  # JPEG: from the first scan to EOI; None where not counted
    jpeg_ls: bool = False
    precision: int = 8  # bits per sample (JPEG P, JPEG 2000 Ssiz of the first component)


def jpeg_header(data: bytes) -> FrameHeader:
    """A JPEG or JPEG-LS codestream's SOFn (or SOF55) size, components and precision, and the bytes
    from its first scan to EOI."""
    if not data.startswith(JPEG_SOI):
        raise CodestreamError("no JPEG start of image")
    frame, position = None, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # junk between segments, which libjpeg skips too
            position += 1
            continue
        marker = data[position + 1]
        if marker == 0xFF or marker in STANDALONE:
            position += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in SOF_MARKERS and position + 10 <= len(data):
            precision, height, width, components = struct.unpack_from(">BHHB", data, position + 4)
            frame = FrameHeader(width, height, components, jpeg_ls=marker == SOF55, precision=precision)
        if marker == SOS:
            if frame is None:
                break
            scan = position + 2 + length
            end = data.find(JPEG_EOI, scan)
            return FrameHeader(frame.width, frame.height, frame.components,
                               (len(data) if end < 0 else end) - scan, frame.jpeg_ls, frame.precision)
        position += 2 + length
    raise CodestreamError("no frame header (SOFn) before the first scan")


def j2k_header(data: bytes) -> FrameHeader:
    """A JPEG 2000 codestream's size, components and precision, from SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz,
    YOsiz, ... Csiz, then Ssiz of each component (bit 7: signed; the rest: bits - 1). A JP2 file wraps the
    codestream in a few small boxes first."""
    start = data.find(J2K_SOC_SIZ, 0, 4096)
    if start < 0:
        raise CodestreamError("no JPEG 2000 codestream header (SOC, SIZ)")
    siz = start + 2
    if siz + 41 > len(data):
        raise CodestreamError("the JPEG 2000 SIZ segment is truncated")
    x, y, x_offset, y_offset = struct.unpack_from(">IIII", data, siz + 6)
    components, ssiz = struct.unpack_from(">HB", data, siz + 38)
    return FrameHeader(max(0, x - x_offset), max(0, y - y_offset), components, precision=(ssiz & 0x7F) + 1)
