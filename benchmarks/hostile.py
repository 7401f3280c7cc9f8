"""Hostile inputs for the gateway: images whose headers lie, bombs, damaged files, odd texts.

Everything is built from a seed and the real samples, so a failing case can be made again.
`make fuzz` (benchmarks/fuzz.py) and the red-team tests (tests/integration/redteam/) draw their requests from here.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width: int, height: int, rows: bytes | None = None, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG with the given header; `rows` (filtered scanlines) default to all black, compressed
    as a stream so a 14000 x 14000 image costs ~200 KB and no memory to make."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    if rows is None:
        line = b"\0" * (1 + width * max(1, bit_depth // 8))
        body = _deflate_repeated(line, height, zlib.compressobj(9))
    else:
        body = zlib.compress(rows)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _deflate_repeated(piece: bytes, times: int, compressor) -> bytes:
    """`piece` * `times` through `compressor`, a megabyte at a time (1 x 49,000,000 lines in ~1 s)."""
    per_block = max(1, 2**20 // len(piece))
    blocks, rest = divmod(times, per_block)
    block = piece * per_block
    return b"".join(compressor.compress(block) for _ in range(blocks)) + compressor.compress(piece * rest) + \
        compressor.flush()


def png_with_text_at(data: bytes, offset: int, text: bytes) -> bytes:
    """A real PNG with a tEXt chunk after IHDR that puts `text` at byte `offset` of the file (a PNG
    with b"DICM" at byte 128 is still a PNG)."""
    ihdr_end = len(PNG_SIGNATURE) + 25
    keyword = b"Comment\0"
    padding = offset - (ihdr_end + 8 + len(keyword))
    if padding < 0:
        raise ValueError(f"byte {offset} is inside the PNG's header")
    chunk = _chunk(b"tEXt", keyword + b" " * padding + text)
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def png_header_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    return png(width, height, rows=b"\0" * 64)


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG with the frame header's size rewritten."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker in the JPEG")


def dicom_around_frame(dicom: bytes, frame: bytes, rows: int, columns: int,
                       syntax: str = pydicom.uid.JPEGBaseline8Bit) -> bytes:
    """A real DICOM whose pixel data is replaced by one encapsulated `frame`, with Rows x Columns as given:
    the header may say one size while the frame says another."""
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    dataset.Rows, dataset.Columns = rows, columns
    dataset.PixelData = pydicom.encaps.encapsulate([frame])
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflated_dicom_bomb(dicom: bytes, inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of a real header whose pixel data inflates to
    `inflated_bytes` of zeros (~1 KB sent per MB inflated); its Rows x Columns stay small."""
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    del dataset.PixelData
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta, body = pydicom.filebase.DicomBytesIO(), pydicom.filebase.DicomBytesIO()
    for buffer in (meta, body):
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(meta, dataset.file_meta)
    pydicom.filewriter.write_dataset(body, dataset)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: no checksum to keep
    head = compressor.compress(body.getvalue() + pixel_header) + compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush a block depends on nothing before it: one megabyte of zeros, compressed once, repeated.
    megabyte = compressor.compress(b"\0" * 2**20) + compressor.flush(zlib.Z_FULL_FLUSH)
    return (b"\0" * 128 + b"DICM" + meta.getvalue() + head + megabyte * (inflated_bytes // 2**20) +
            compressor.flush())


def rle_dicom(dicom: bytes, segments: list[bytes], rows: int, columns: int) -> bytes:
    """A real DICOM header (grey, 8 bits per segment: one segment 8-bit, two 16-bit) over one RLE Lossless
    frame of `segments` (PackBits runs): a run of b"\x81" + byte repeats the byte 128 times, so 2 coded
    bytes claim 128 decoded ones."""
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, 1
    dataset.BitsAllocated = dataset.BitsStored = 8 * len(segments)
    dataset.HighBit = dataset.BitsStored - 1
    offsets = [64 + sum(map(len, segments[:i])) for i in range(len(segments))]
    header = struct.pack("<16I", len(segments), *offsets, *[0] * (15 - len(segments)))
    dataset.PixelData = pydicom.encaps.encapsulate([header + b"".join(segments)])
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_claiming(dicom: bytes, rows: int, columns: int, frames: int = 1) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    dataset.Rows, dataset.Columns = rows, columns
    if frames > 1:
        dataset.NumberOfFrames = frames
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def encode(array: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


class HostileImages:
    """Image payloads, one kind per method, drawn from `rng` and the real samples."""

    def __init__(self, samples: Path, seed: int = 0):
        self.rng = random.Random(seed)
        self.pngs = [p.read_bytes() for p in sorted(samples.glob("*.png"))]
        self.jpegs = [p.read_bytes() for p in sorted(samples.glob("*.jpg"))]
        self.dicoms = [p.read_bytes() for p in sorted(samples.glob("*.dcm"))]
        self.kinds = [name for name in dir(self) if name.startswith("k_")]

    def draw(self) -> tuple[str, bytes]:
        kind = self.rng.choice(self.kinds)
        return kind[2:], getattr(self, kind)()

    def _real(self) -> bytes:
        return self.rng.choice(self.pngs + self.jpegs + self.dicoms)

    def k_random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([1, 7, 128, 132, 4096, 100_000]))

    def k_truncated(self) -> bytes:
        data = self._real()
        return data[:self.rng.randrange(1, len(data))]

    def k_bit_flips(self) -> bytes:
        data = bytearray(self._real())
        for _ in range(self.rng.choice([1, 4, 64])):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def k_header_bomb_png(self) -> bytes:
        return png_header_bomb(self.rng.choice([60_000, 30_000, 100_000]), self.rng.choice([60_000, 20_000]))

    def k_black_png_over_budget(self) -> bytes:
        return png(self.rng.choice([8_000, 10_000]), 8_000)

    def k_jpeg_claiming_huge(self) -> bytes:
        return jpeg_claiming(self.rng.choice(self.jpegs), 65_000, 65_000)

    def k_dicom_claiming_huge(self) -> bytes:
        return dicom_claiming(self.rng.choice(self.dicoms), 60_000, 60_000, self.rng.choice([1, 50]))

    def k_extreme_aspect_png(self) -> bytes:
        """Within the pixel budget, not within the aspect limit: 1 x 49,000,000 cost 2-4 GB to resize."""
        return self.rng.choice([lambda: png(1, 49_000_000), lambda: png(12_000, 1_000)])()

    def k_jpeg_lying_about_its_size(self) -> bytes:
        """16 x 16 pixels of data under a 7000 x 7000 header: libjpeg fills the rest and says nothing."""
        return jpeg_claiming(encode(np.full((16, 16), 128, np.uint8), "JPEG"), 7_000, 7_000)

    def k_dicom_lying_jpeg_frame(self) -> bytes:
        """A 64 x 64 DICOM header around a frame that says 14000 x 14000, or a 7000 x 7000 header around a
        frame that says so too but holds 16 x 16 pixels of data."""
        side = self.rng.choice([14_000, 7_000])
        frame = jpeg_claiming(encode(np.full((16, 16), 128, np.uint8), "JPEG"), side, side)
        header = 64 if side == 14_000 else side
        return dicom_around_frame(self.rng.choice(self.dicoms), frame, header, header)

    def k_png_with_dicm_at_128(self) -> bytes:
        """A valid PNG whose tEXt chunk puts DICM where a DICOM file has it."""
        return png_with_text_at(self.rng.choice(self.pngs), 128, b"DICM")

    def k_deflated_dicom_bomb(self) -> bytes:
        return deflated_dicom_bomb(self.rng.choice(self.dicoms), self.rng.choice([256, 1024]) * 2**20)

    def k_dicom_zero_size(self) -> bytes:
        return dicom_claiming(self.rng.choice(self.dicoms), 0, self.rng.choice([0, 512]))

    def k_odd_png_mode(self) -> bytes:
        shape, mode = self.rng.choice([((33, 17), "1"), ((40, 40, 4), "RGBA"), ((16, 64, 2), "LA"), ((50, 50), "I;16"),
                                       ((1, 1), "L"), ((3, 900), "L")])
        array = np.random.default_rng(self.rng.randrange(1 << 30)).integers(0, 255, shape)
        dtype = np.uint16 if mode == "I;16" else np.uint8
        image = Image.fromarray(array.astype(dtype))
        image = image.convert(mode) if mode in ("1", "LA", "RGBA") else image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def k_other_format(self) -> bytes:
        array = np.zeros((64, 64), np.uint8)
        return encode(array, self.rng.choice(["TIFF", "GIF", "BMP", "WEBP"]))

    def k_dicom_preamble_only(self) -> bytes:
        return b"\0" * 128 + b"DICM" + self.rng.randbytes(self.rng.choice([0, 16, 300]))

    def k_empty(self) -> bytes:
        return b""


def hostile_texts(rng: random.Random) -> str:
    return rng.choice([
        "", " ", "\0" * 50, "effusion\0cardiomegaly", "x" * 9_999, "é" * 5_000, "🫁" * 2_000,
        "".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(300)), "\u202e\u200b" * 100, "a" * 10_001,
        "SELECT * FROM studies; --", "{{7*7}} ${jndi:ldap://x}", "small left pleural effusion",
    ])
