"""What a benchmark ran on: machine, Python packages, date; recorded beside every figure."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"
PACKAGES = ("numpy", "torch", "transformers", "open_clip_torch", "onnx", "onnxruntime", "nvidia-pytriton",
            "tritonclient", "faiss-cpu", "grpcio", "cryptography", "PyJWT", "prometheus-client")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe() -> dict:
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpu": None,
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def result_path(name: str | None) -> Path:
    """benchmarks/results/<date>-<host>[-<name>].json"""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = f"-{name}" if name else ""
    return RESULTS_DIR / f"{dt.date.today().isoformat()}-{socket.gethostname()}{suffix}.json"


def save(name: str, results: dict, markdown: str = "") -> Path:
    """Write `results` to benchmarks/results/<date>-<host>-<name>.json, and `markdown` beside it as .md."""
    path = result_path(name)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    if markdown:
        path.with_suffix(".md").write_text(markdown)
        print(f"wrote {path.with_suffix('.md')}")
    return path


def exit_status(problems: list[str]) -> int:
    """Print each problem as a FAIL line; 1 when there is any, so `make` stops."""
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0
