"""What decoding one upload costs: peak memory and seconds of cxr.images.preprocess per image, each in
a fresh process (so the peak is that image's alone), for the samples and for the largest images the
gateway's limits let through (50 megapixels at the widest allowed aspect, 8-bit grey and RGB, 16-bit,
JPEG, DICOM), plus the hostile shapes the limits exist for. `--together N` also decodes N copies of
the worst cases at once on the gateway's 4 decode threads, with and without its pixel budget
(max_decoding_pixels), and times a 512 px radiograph sent right after them (the bystander).

The large images are real radiographs stretched to size (so they compress as radiographs do), made
once under .cache/image-decode/. Results: benchmarks/results/<date>-<host>-image-decode.json.

    python -m benchmarks.image_decode [--cases png_rgb8_50mp_1x8 ...] [--size 448] [--together 4] [--label after]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from benchmarks import hostile
from benchmarks.machine import describe, save

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "../shared/data/cxr_samples"
CACHE = ROOT / ".cache" / "image-decode"
GREY_SAMPLE = SAMPLES / "00000001_000.png"
RGB_SAMPLE = SAMPLES / "h0001.png"
WIDE = (2_500, 20_000)  # 50 MP at 1:8, the widest aspect the gateway takes
SQUARE = (7_071, 7_071)  # 50 MP
# The largest peaks per decode (see the figures): a DICOM's parsed dataset is held before the budget is
# (its pixel count is in it), a PNG's header costs nothing.
TOGETHER = ("dicom_deflated16_50mp_windowed", "png_rgb8_50mp_1x8")
DECODE_THREADS = 4  # gateway.server.DECODE_THREADS


def _stretched(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert(mode).resize(size, Image.Resampling.BILINEAR))


def _grey16(size: tuple[int, int]) -> np.ndarray:
    """A 12-bit detector's values in 16 bits."""
    return _stretched(GREY_SAMPLE, size, "L").astype(np.uint16) * 16


def _dicom(pixels: np.ndarray, syntax: str, **attributes) -> bytes:
    dataset = pydicom.dcmread(next(SAMPLES.glob("*.dcm")))
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = dataset.BitsStored = 8 * pixels.itemsize
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    for key, value in attributes.items():
        setattr(dataset, key, value)
    if syntax == pydicom.uid.JPEGBaseline8Bit:
        dataset.PixelData = pydicom.encaps.encapsulate([hostile.encode(pixels, "JPEG", quality=90)])
    else:
        dataset.PixelData = pixels.tobytes()
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


MADE = {
    "png_grey8_50mp_1x8": lambda: hostile.encode(_stretched(GREY_SAMPLE, WIDE, "L"), "PNG"),
    "png_grey8_50mp_square": lambda: hostile.encode(_stretched(GREY_SAMPLE, SQUARE, "L"), "PNG"),
    "png_rgb8_50mp_1x8": lambda: hostile.encode(_stretched(RGB_SAMPLE, WIDE, "RGB"), "PNG"),
    "png_grey16_50mp_1x8": lambda: hostile.encode(_grey16(WIDE), "PNG"),
    "jpeg_grey_50mp_1x8": lambda: hostile.encode(_stretched(GREY_SAMPLE, WIDE, "L"), "JPEG", quality=90),
    "jpeg_rgb_50mp_1x8": lambda: hostile.encode(_stretched(RGB_SAMPLE, WIDE, "RGB"), "JPEG", quality=90),
    "dicom_deflated16_50mp_windowed": lambda: _dicom(
        _grey16(WIDE), pydicom.uid.DeflatedExplicitVRLittleEndian, RescaleSlope=1.5, RescaleIntercept=-1024,
        WindowCenter=1500, WindowWidth=3000, PhotometricInterpretation="MONOCHROME1"),
    "dicom_jpeg8_50mp": lambda: _dicom(_stretched(GREY_SAMPLE, WIDE, "L"), pydicom.uid.JPEGBaseline8Bit),
    "png_1x49mp": lambda: hostile.png(1, 49_000_000),  # defect 4: within the pixel budget, not the side limit
}


def cases() -> dict[str, Path]:
    """Every case's file: the samples as they are, the rest made once into CACHE."""
    files = {f"sample_{p.name[:20]}": p for p in sorted(SAMPLES.iterdir())}
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, make in MADE.items():
        path = CACHE / name
        if not path.exists():
            path.write_bytes(make())
        files[name] = path
    return files


def _memory_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":"))


def measure(path: Path, size: int) -> dict:
    """Runs in the child: one preprocess, its peak memory above what reading the file cost."""
    from cxr.images import ImageLimits, InvalidImageError, preprocess
    from cxr.settings import Settings

    data = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here (ru_maxrss outlives exec)
    before = _memory_kb("VmHWM")
    started = time.perf_counter()
    try:
        preprocess(data, size, ImageLimits.of(Settings()))  # the gateway's default limits
        outcome = "decoded"
    except InvalidImageError as error:
        outcome = f"refused: {type(error).__name__}"
    seconds = time.perf_counter() - started
    peak = _memory_kb("VmHWM")
    return {"bytes": len(data), "outcome": outcome, "seconds": round(seconds, 3),
            "peak_mb": round((peak - before) / 1024, 1)}


def measure_together(path: Path, size: int, copies: int, budget: bool) -> dict:
    """Runs in the child: `copies` of one image and then a bystander, on the gateway's decode threads."""
    from cxr.images import ImageLimits, PixelBudget, preprocess
    from cxr.settings import Settings

    data, bystander = path.read_bytes(), GREY_SAMPLE.read_bytes()
    settings = Settings()
    pixels = PixelBudget(settings.max_decoding_pixels) if budget else None
    Path("/proc/self/clear_refs").write_text("5")
    before, started = _memory_kb("VmHWM"), time.perf_counter()
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        large = [pool.submit(preprocess, data, size, ImageLimits.of(settings), pixels, time.monotonic() + 30)
                 for _ in range(copies)]
        small = pool.submit(preprocess, bystander, size, ImageLimits.of(settings), pixels, time.monotonic() + 30)
        small.result()
        bystander_s = time.perf_counter() - started
        for future in large:
            future.result()
    return {"copies": copies, "budget_mp": settings.max_decoding_pixels / 1e6 if budget else None,
            "seconds": round(time.perf_counter() - started, 2), "bystander_s": round(bystander_s, 2),
            "peak_mb": round((_memory_kb("VmHWM") - before) / 1024, 1)}


def _child(*arguments: str) -> dict:
    child = subprocess.run([sys.executable, "-m", "benchmarks.image_decode", *arguments], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout)


def run(names: list[str], size: int) -> dict:
    files = cases()
    results = {}
    for name in names or files:
        results[name] = _child("--child", str(files[name]), "--size", str(size))
        print(name, results[name], flush=True)
    return results


def run_together(copies: int, size: int) -> dict:
    results = {}
    for name in TOGETHER:
        for budget in ("budget", "no-budget"):
            key = f"{copies} x {name}, {budget}"
            results[key] = _child("--child", str(cases()[name]), "--size", str(size), "--together", str(copies),
                                  f"--{budget}")
            print(key, results[key], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=[])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--label", default="", help="appended to the result's name, e.g. before/after")
    parser.add_argument("--together", type=int, default=0, help="also decode this many worst cases at once")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = (measure_together(args.child, args.size, args.together, args.budget) if args.together
                   else measure(args.child, args.size))
        print(json.dumps(figures))
        return 0
    results = run(args.cases, args.size)
    if args.together:
        results.update(run_together(args.together, args.size))
    save("image-decode" + (f"-{args.label}" if args.label else ""),
         {"machine": describe(), "settings": {"size": args.size}, "figures": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
