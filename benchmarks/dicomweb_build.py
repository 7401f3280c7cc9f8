"""Index builds from a PACS against builds from disk: the same N DICOM files, read from a folder and
fetched from a local Orthanc over DICOMweb (QIDO-RS listing, WADO-RS fetches), through the same
Triton and model.

  python -m benchmarks.dicomweb_build [--count 200] [--model cxr-mini]

Figures (images/s for each, and a rebuild that finds nothing new) go to
benchmarks/results/<date>-<host>-dicomweb.json. Orthanc and Triton run on loopback; Orthanc comes
from `make setup-pacs`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import orthanc
from benchmarks.machine import describe, save
from benchmarks.stack import exported, served
from cxr import archives, dicomweb
from cxr.catalog import ExportedModel
from cxr.settings import load_settings
from indexing.build import BuildOptions, build_index
from indexing.dicomweb_build import build_from_pacs

ROOT = Path(__file__).parent.parent


def _timed(build) -> dict:
    started = time.perf_counter()
    written = build()
    seconds = time.perf_counter() - started
    return {"images": written["count"], "seconds": round(seconds, 2),
            "images_per_s": round(written["count"] / seconds, 1),
            **{k: written[k] for k in ("new", "kept", "skipped") if k in written}}


def run(count: int, model_name: str, workers: int) -> dict:
    base = load_settings(ROOT)
    options = BuildOptions(progress=False, workers=workers)
    with exported(base, model_name) as settings, served(settings, [], gateway=False, rebuild_index=False), \
            tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        root = Path(tmp)
        model = ExportedModel.load(settings.model_repository, model_name)
        images = orthanc.nih_images(settings.data_dir.resolve(), count)
        files = orthanc.write_files(images, root / "files")
        manifest = root / "archive.jsonl"
        manifest.write_text("".join(json.dumps({"image": str(p), "image_id": p.stem}) + "\n" for p in files))
        disk = _timed(lambda: build_index(archives.manifest(manifest), model, settings, root / "disk", options))
        with orthanc.Orthanc(root / "orthanc") as server:
            orthanc.stow(server.url, files)
            with dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD) as pacs:
                fresh = _timed(lambda: build_from_pacs(pacs, dicomweb.Query(), model, settings, root / "pacs", options))
                again = _timed(lambda: build_from_pacs(pacs, dicomweb.Query(), model, settings, root / "pacs", options))
    return {"model": model_name, "images": count, "image_size": "64 x 64 8-bit DICOM (NIH sample)",
            "workers": workers, "disk": disk, "pacs_first_build": fresh, "pacs_rebuild_nothing_new": again,
            "pacs_vs_disk": round(fresh["images_per_s"] / disk["images_per_s"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default="cxr-mini")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    args = parser.parse_args(argv)
    if reason := orthanc.missing():
        print(f"error: {reason}", file=sys.stderr)
        return 2
    results = {"machine": describe(), **run(args.count, args.model, args.workers)}
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    save("dicomweb", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
