"""The gateway's footprint: RSS after start and after 200 queries, seconds from launch to SERVING, and
what it imports; optionally the size of a serve-only install (`pip install '.[serve]'`).

A real gateway (its own process, gRPC over loopback) over the 800-image NIH index with cxr-mini,
served by a real Triton. `--python` runs the gateway under another interpreter, e.g. a serve-only
venv's, to measure exactly what a deployment carries.

    python -m benchmarks.gateway_footprint [--serve-venv /tmp/serve-venv] [--python PY] [--label NAME]
        [--compare-to benchmarks/results/<earlier>-footprint.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.compare import _gateway_sender, _Queries
from benchmarks.load import run_load
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import archives, gateway_process
from cxr.processes import stop_process
from cxr.settings import Settings, load_settings, to_environment

MODEL = "cxr-mini"
QUERIES = 200  # half text (the tokenizer's path), half image
CONCURRENCY = 4
TARGET_RSS_MB = 200
ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "tokenizers", "sentencepiece", "onnxruntime", "faiss", "pandas", "pyarrow",
         "pymilvus", "PIL", "pydicom", "cryptography", "starlette", "uvicorn", "tritonclient", "gevent")
# Imports the gateway's entry point and loads the catalog (tokenizers included), as start-up does.
IMPORT_PROBE = ("import sys, json; from pathlib import Path; import gateway.server; from cxr.catalog import load_catalog; "
                "load_catalog(Path(sys.argv[1])); print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")


def _start_gateway(settings: Settings, python: str) -> tuple[subprocess.Popen, Path]:
    """gateway.process.start, under a chosen interpreter (a serve-only venv's, say)."""
    gateway_process.check_port(settings)
    log_file = settings.run_dir / gateway_process.LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen([python, "-m", "gateway.server"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, **to_environment(settings)), start_new_session=True), log_file


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """One process's resident memory (MB), without its children."""
    status = Path(f"/proc/{pid}/status").read_text()
    return round(next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field)) / 1024, 1)


def _memory(pid: int) -> dict:
    return {"rss_mb": _rss_mb(pid), "tree_rss_mb": process_tree_rss_mb(pid), "peak_rss_mb": _rss_mb(pid, "VmHWM")}


def measure_gateway(settings: Settings, queries: _Queries, python: str) -> dict:
    """Launch -> SERVING seconds, memory when idle and after QUERIES queries, of a freshly started gateway."""
    started = time.perf_counter()
    process, log = _start_gateway(settings, python)
    try:
        gateway_process.wait_answering(settings, process, log)
        gateway_process.wait_serving(settings)
        figures = {"startup_s": round(time.perf_counter() - started, 2), "after_start": _memory(process.pid)}
        load = {kind: run_load(_gateway_sender(settings, kind, queries), CONCURRENCY, QUERIES // 2, 120)
                for kind in ("text", "image")}
        figures["after_queries"] = _memory(process.pid)
        figures["queries"] = {kind: {k: result.get(k) for k in ("requests", "errors", "qps", "p50_ms", "first_error")}
                              for kind, result in load.items()}
        return figures
    finally:
        stop_process(process)


def imported_modules(settings: Settings, python: str) -> list[str]:
    """The heavy top-level packages a gateway process imports (entry point + catalog)."""
    result = subprocess.run([python, "-c", IMPORT_PROBE, str(settings.model_repository)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    return sorted(set(json.loads(result.stdout.splitlines()[-1])) & set(HEAVY))


def install_size(venv: Path) -> dict:
    """Disk size of a venv's site-packages, and whether torch or transformers are in it."""
    site = next(venv.glob("lib/python3*/site-packages"))
    size = subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True, check=True).stdout.split()[0]
    return {"venv": str(venv), "site_packages_mb": int(size),
            "torch": any(site.glob("torch-*.dist-info")), "transformers": any(site.glob("transformers-*.dist-info"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter the gateway runs under")
    parser.add_argument("--serve-venv", type=Path, help="a serve-only venv: its size, and a gateway run under it")
    parser.add_argument("--label", default="", help="a note kept in the results (e.g. 'before')")
    parser.add_argument("--compare-to", type=Path, help="an earlier run's JSON, kept beside this one's figures")
    args = parser.parse_args(argv)
    base = load_settings()
    nih = base.data_dir / "nih800"
    records = archives.nih_labels(nih / "labels.csv", nih)
    queries = _Queries(records)
    pythons = {"this_venv": args.python}
    if args.serve_venv:
        pythons["serve_venv"] = str(args.serve_venv / "bin" / "python")
    results = {"machine": machine.describe(), "model": MODEL, "label": args.label, "queries": QUERIES,
               "target_rss_mb": TARGET_RSS_MB, "gateways": {}}
    with exported(base, MODEL) as settings, served(settings, records, gateway=False) as stack:
        results["index_build"] = stack.index_build
        for name, python in pythons.items():
            figures = measure_gateway(settings, queries, python)
            figures["python"], figures["imports"] = python, imported_modules(settings, python)
            results["gateways"][name] = figures
            print(name, figures["startup_s"], "s to SERVING;", figures["after_start"], "->", figures["after_queries"])
    installs = {"this_venv": install_size(Path(sys.prefix))}
    if args.serve_venv:
        installs["serve_venv"] = install_size(args.serve_venv)
    results["installs"] = installs
    if args.compare_to:
        earlier = json.loads(args.compare_to.read_text())
        results["compared_to"] = {key: earlier.get(key) for key in ("label", "gateways", "installs")}
    machine.save("footprint", results)
    over = [f"{name}: {g['after_queries']['rss_mb']} MB after {QUERIES} queries > {TARGET_RSS_MB} MB"
            for name, g in results["gateways"].items() if g["after_queries"]["rss_mb"] > TARGET_RSS_MB]
    return machine.exit_status(over)


if __name__ == "__main__":
    sys.exit(main())
