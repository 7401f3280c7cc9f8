"""What decoding costs per DICOM transfer syntax, for a 2048 x 2048 CR with 16 bits allocated and 12 stored
(a detector's chest radiograph): milliseconds to decode the pixels (pydicom reading the file and the
plugin cxr.transfer_syntaxes names decoding it) and to prepare it as a query (cxr.images.preprocess:
header checks, decode, LUTs, resize to 448), median and range of --repeats runs in one process, beside
the file's size. JPEG baseline holds 8 bits only: it is timed on the 8-bit image of the same radiograph;
12-bit JPEG Extended is refused (no decoder here), which is timed too.

The variants are made by benchmarks.dicom_variants (dcmtk; JPEG 2000 by OpenJPEG through pydicom) under
.cache/decode-speed/. Results: benchmarks/results/<date>-<host>-decode-speed.json and .md.

    python -m benchmarks.decode_speed [--side 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from benchmarks import dicom_variants
from benchmarks.machine import describe, package_version, save
from cxr.images import InvalidImageError, preprocess
from cxr.transfer_syntaxes import DECODED

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "decode-speed"
SIZE = 448  # the image towers' input side
DECODERS = ("pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "python-gdcm", "pillow", "numpy")
EIGHT_BIT_ONLY = ("jpeg-baseline",)



def _dcmtk() -> str:
    done = subprocess.run(["dcmcjpeg", "--version"], capture_output=True, text=True)
    found = re.search(r"v(\d+(\.\d+)+)", done.stdout)
    return f"dcmtk {found.group(1) if found else '(version unknown)'}"


def files(side: int) -> dict[str, Path]:
    """{variant: file} of the 12-bit image (8-bit for EIGHT_BIT_ONLY), made once per side into CACHE."""
    folder = CACHE / str(side)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {name: folder / f"{name}.dcm" for name in dicom_variants.VARIANTS}
    if not all(path.exists() for path in wanted.values()):
        natives = dicom_variants.natives(side)
        for name in dicom_variants.VARIANTS:
            native = natives["grey8" if name in EIGHT_BIT_ONLY else "grey12"]
            dicom_variants.make(native, name, wanted[name])
    return wanted


def _ms(seconds: list[float]) -> dict:
    return {"median": round(1000 * statistics.median(seconds), 1), "min": round(1000 * min(seconds), 1),
            "max": round(1000 * max(seconds), 1)}


def _decode(data: bytes) -> None:
    from pydicom.pixels import pixel_array

    dataset = pydicom.dcmread(io.BytesIO(data))
    pixel_array(dataset, decoding_plugin=DECODED[str(dataset.file_meta.TransferSyntaxUID)].plugin)


def measure(path: Path, repeats: int) -> dict:
    data = path.read_bytes()
    header = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = DECODED[str(header.file_meta.TransferSyntaxUID)]
    raw_bytes = header.Rows * header.Columns * header.BitsAllocated // 8
    figures = {"syntax": syntax.name, "package": syntax.package, "bits_stored": int(header.BitsStored),
               "mb": round(len(data) / 2**20, 2), "ratio": round(raw_bytes / len(data), 1)}
    try:
        preprocess(data, SIZE)  # warm: imports, plugin look-ups
    except InvalidImageError as error:
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            try:
                preprocess(data, SIZE)
            except InvalidImageError:
                timings.append(time.perf_counter() - started)
        return dict(figures, refused=str(error), refusal_ms=_ms(timings))
    for name, run in (("decode_ms", _decode), ("preprocess_ms", lambda d: preprocess(d, SIZE))):
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            run(data)
            timings.append(time.perf_counter() - started)
        figures[name] = _ms(timings)
    return figures


def markdown(results: dict) -> str:
    side, machine = results["settings"]["side"], results["machine"]
    lines = [f"# DICOM decode time per transfer syntax: {side} x {side} CR, 12 bits stored in 16", "",
             f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; median (min-max) of "
             f"{results['settings']['repeats']} runs in one process. decode: pydicom reads the file and the plugin "
             f"decodes it; preprocess: cxr.images.preprocess to {SIZE} x {SIZE} (checks, decode, LUTs, resize).", "",
             "| variant | syntax | decoded by | bits | MB | ratio | decode ms | preprocess ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in results["figures"].items():
        if "refused" in f:
            cells = ["refused", f"refused in {f['refusal_ms']['median']}"]
        else:
            cells = [f"{f[k]['median']} ({f[k]['min']}-{f[k]['max']})" for k in ("decode_ms", "preprocess_ms")]
        lines.append(f"| {name} | {f['syntax']} | {f['package']} | {f['bits_stored']} | {f['mb']} | {f['ratio']} | "
                     f"{' | '.join(cells)} |")
    versions = ", ".join(f"{k} {v}" for k, v in results["decoders"].items())
    lines += ["", f"Versions: {versions}; variants written by {results['dcmtk']} (JPEG 2000: OpenJPEG via pydicom)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if reason := dicom_variants.missing():
        print(reason, file=sys.stderr)
        return 1
    figures = {}
    for name, path in files(args.side).items():
        figures[name] = measure(path, args.repeats)
        print(name, figures[name], flush=True)
    results = {"machine": describe(), "decoders": {p: package_version(p) for p in DECODERS}, "dcmtk": _dcmtk(),
               "settings": {"side": args.side, "repeats": args.repeats, "size": SIZE}, "figures": figures}
    save("decode-speed", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
