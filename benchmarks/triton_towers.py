"""True-size towers in Triton on this machine: export cost, latency and throughput per family.

Each family is built at its real architecture with random weights (weights do not change speed),
exported through `cxr export`, served by the local tritonserver with dynamic batching on, then
off, and loaded from the client side:

  python -m benchmarks.triton_towers [--models pubmed_clip siglip] [--budget 60]

Figures go to benchmarks/results/<date>-<host>-triton-towers.json. Loads are bounded in count
and time and stay on loopback.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, result_path
from benchmarks.stack import process_tree_rss_mb, set_batching
from benchmarks.timing import time_requests
from cxr import registry
from cxr.manifest import read_export_manifest, tokenizer_dir
from cxr.processes import stop_process
from cxr.settings import Settings, load_settings
from cxr.tokenization import TextTokenizer
from cxr.towers import towers
from cxr.triton import server_process
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient

MODELS = ["pubmed_clip", "biomedclip", "siglip", "medsiglip"]
CONCURRENCY = 16
LATENCY_REQUESTS = 30
THROUGHPUT_REQUESTS = 256
QUERY = "small left pleural effusion with adjacent atelectasis"


def export_in_child(name: str, settings: Settings) -> dict:
    """Build and export in a fresh process so its peak RSS is the export's own."""
    command = [sys.executable, "-m", "benchmarks.triton_towers", "--export-only", name,
               "--repository", str(settings.model_repository), "--cache", str(settings.cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export of {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export_only(name: str, repository: Path, cache: Path) -> None:
    from export.repository import export_model
    from export.families import random_checkpoint_dir

    spec = registry.get_model(name)
    settings = replace(load_settings(), model_repository=repository, cache_dir=cache)
    cached = (cache / "random" / name).exists()
    started = time.perf_counter()
    checkpoint = random_checkpoint_dir(spec, cache / "random", settings.data_dir)
    built = None if cached else round(time.perf_counter() - started, 1)  # None: reused from an earlier run
    manifest = export_model(spec, settings, checkpoint=str(checkpoint), log=lambda *_: None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"build_random_checkpoint_s": built, "export_s": manifest["export_seconds"],
                      "onnx_mb": {k: round(v["bytes"] / 2**20, 1) for k, v in manifest["onnx"].items()},
                      "peak_rss_mb": round(peak_mb)}))


def _throughput(make_client, send, budget: float) -> dict:
    """CONCURRENCY threads, each with its own client, one item per request, bounded in count and time."""
    lock, counter = threading.Lock(), {"sent": 0, "done": 0}
    deadline = time.monotonic() + budget

    def worker():
        client = make_client()
        while time.monotonic() < deadline:
            with lock:
                if counter["sent"] >= THROUGHPUT_REQUESTS:
                    break
                counter["sent"] += 1
            send(client)
            with lock:
                counter["done"] += 1
        client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for future in [pool.submit(worker) for _ in range(CONCURRENCY)]:
            future.result()
    seconds = time.perf_counter() - started
    return {"requests_per_s": round(counter["done"] / seconds, 2), "requests": counter["done"],
            "seconds": round(seconds, 1)}


def _measure_towers(settings: Settings, spec, budget: float) -> dict:
    manifest = read_export_manifest(settings.model_repository, spec.name)
    tokenizer = TextTokenizer(tokenizer_dir(settings.model_repository, spec.name), manifest["context_length"],
                              spec.text_inputs, manifest["tokenizer"]["clean"])
    image, text = towers(spec)
    pixels = np.random.default_rng(0).integers(0, 256, (1, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    tokens = tokenizer([QUERY])

    def make_client():
        return TowerClient(connections(settings), image, text, spec.batching.max_batch_size)

    sends = {"image": lambda c: c.embed_images(pixels), "text": lambda c: c.embed_texts(tokens)}
    probe = make_client()
    figures = {}
    for tower_name, send in sends.items():
        figures[tower_name] = {"batch1": time_requests(lambda send=send: send(probe), LATENCY_REQUESTS, budget),
                               f"concurrency{CONCURRENCY}": _throughput(make_client, send, budget)}
    probe.close()
    return figures


def _serve_and_measure(settings: Settings, spec, batching: bool, budget: float) -> dict:
    set_batching(settings, spec, batching)
    process, log_file = server_process.start(settings)
    try:
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], process, 900, log_file)
        figures = _measure_towers(settings, spec, budget)
        figures["triton_rss_mb"] = process_tree_rss_mb(process.pid)
        return figures
    finally:
        stop_process(process)


def run(models: list[str], budget: float) -> dict:
    results = {"machine": describe(), "settings": {"concurrency": CONCURRENCY, "budget_s": budget,
                                                   "latency_requests": LATENCY_REQUESTS,
                                                   "throughput_requests": THROUGHPUT_REQUESTS}, "models": {}}
    base = load_settings()
    path = result_path("triton-towers")
    if path.is_file():  # today's run on this host measured other models already: keep them
        results["models"] = json.loads(path.read_text())["models"]
    for name in models:
        spec = registry.get_model(name)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            settings = replace(base, model_repository=Path(tmp) / "model_repository", run_dir=Path(tmp) / "run")
            print(f"[{name}] building a random-weight {spec.embed_dim}-d model at true size and exporting", flush=True)
            entry = {"export": export_in_child(name, settings)}
            for batching in (True, False):
                label = "batching_on" if batching else "batching_off"
                print(f"[{name}] serving with dynamic batching {'on' if batching else 'off'}", flush=True)
                entry[label] = _serve_and_measure(settings, spec, batching, budget)
            for tower in ("image", "text"):
                on, off = (entry[k][tower][f"concurrency{CONCURRENCY}"]["requests_per_s"]
                           for k in ("batching_on", "batching_off"))
                entry[f"{tower}_batching_speedup"] = round(on / off, 2) if off else None
        results["models"][name] = entry
        path.write_text(json.dumps(results, indent=2))  # keep what is measured if a later model fails
        print(json.dumps({name: entry}, indent=2), flush=True)
    print(f"wrote {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds at most per measurement")
    parser.add_argument("--export-only", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_only:
        _export_only(args.export_only, args.repository, args.cache)
        return 0
    run(args.models, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
