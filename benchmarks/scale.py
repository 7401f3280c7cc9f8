"""`make bench-scale`: what archive size costs, per vector store and index type.

Two parts, both on synthetic clustered archives written by `cxr index synth`'s code:

  store    for each dimension, size, backend and index type: build seconds, bytes, start-up
           seconds (open + checksums), resident memory once opened and after the queries,
           recall@10 against exact search, and q/s with p50/p99 at concurrency 1/16/64 through
           the gateway's own SearchBatcher (a fresh process per index, so memory is its own).
  gateway  the served stack (real Triton, real gateway, gRPC over loopback, cxr-mini): image and
           text queries at concurrency 16 on the 800-image NIH index and on 1M synthetic images
           (flat, ivf, ivf with a label filter), gateway RSS and start-up to SERVING.

    python -m benchmarks.scale [--part store|gateway|both] [--sizes 10000,100000,1000000]
                               [--dims 256,1152] [--types flat,ivf,sq8] [--backends faiss,milvus]

Indexes are cached under .cache/scale/ (rebuilt only when missing). Results:
benchmarks/results/<date>-<host>-scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, result_path, save
from indexing import synthetic

CACHE = Path(".cache/scale")
QUERIES = 200
RECALL_QUERIES = 100
MAX_QUERIES = 3000
MAX_SECONDS = 20.0
CONCURRENCY = (1, 16, 64)
HNSW_MAX = 100_000  # an HNSW over a million 1152-d vectors takes hours to build on two cores
SEED = 0


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return round(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024, 1)


def _backend(name: str, folder: Path):
    if name == "milvus":
        from cxr.store.milvus.backend import MilvusBackend

        return MilvusBackend(str(folder / "milvus.db"), "")
    from cxr.store.faiss_backend import FaissBackend

    return FaissBackend(folder)


def _index_folder(backend: str, dim: int, size: int, index_type: str) -> Path:
    return CACHE / f"{backend}-{dim}d-{size}-{index_type}"


def _type(name: str) -> tuple[str, bool]:
    """'ivfpq+rerank' -> ('ivfpq', True)."""
    index_type, _, rerank = name.partition("+")
    return index_type, rerank == "rerank"


def ensure_index(backend: str, dim: int, size: int, index_type: str) -> dict:
    """Write the synthetic index unless the cache has it; its manifest plus the build seconds."""
    folder = _index_folder(backend, dim, size, index_type)
    done = folder / "built.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    index_type, rerank = _type(index_type)
    manifest = synthetic.write(_backend(backend, folder), "scale", dim, size, index_type, {}, seed=SEED,
                               rerank=rerank)
    built = {"build_s": round(time.perf_counter() - started, 1), "count": manifest["count"],
             "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}
    done.write_text(json.dumps(built))
    return built


def exact_neighbours(dim: int, size: int) -> np.ndarray:
    path = CACHE / f"truth-{dim}d-{size}.npy"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, synthetic.exact_top_k(synthetic.queries(RECALL_QUERIES, dim), size, dim, SEED))
    return np.load(path)


async def _closed_loop(batcher, queries: np.ndarray, concurrency: int) -> dict:
    from benchmarks.load import summarize_latencies

    latencies: list[float] = []
    deadline = time.monotonic() + MAX_SECONDS
    sent = 0

    async def client(offset: int):
        nonlocal sent
        while sent < MAX_QUERIES and time.monotonic() < deadline:
            sent += 1
            started = time.perf_counter()
            await batcher.search(queries[(offset + sent) % len(queries)], 10)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return summarize_latencies(latencies, time.perf_counter() - started, concurrency)


def measure(backend: str, dim: int, size: int, index_type: str) -> dict:
    """Runs in a process of its own: open the index, then recall and load figures."""
    from gateway.search_batcher import SearchBatcher

    rss_before = _rss_mb()
    started = time.perf_counter()
    store = _backend(backend, _index_folder(backend, dim, size, index_type)).open("scale", dim)
    figures = {"startup_s": round(time.perf_counter() - started, 2), "rss_open_mb": round(_rss_mb() - rss_before, 1)}
    queries = synthetic.queries(RECALL_QUERIES, dim)
    found = [[i for i, _ in hits] for hits in store.search(queries, 10)]
    figures["recall_at_10"] = round(synthetic.recall_at_k(found, exact_neighbours(dim, size)), 4)
    load_queries = synthetic.queries(QUERIES, dim, seed=11)
    batcher = SearchBatcher(store, max_batch=64)  # the gateway's defaults
    figures["load"] = {str(c): asyncio.run(_closed_loop(batcher, load_queries, c)) for c in CONCURRENCY}
    figures["rss_after_mb"] = round(_rss_mb() - rss_before, 1)
    batcher.close()
    return figures


def store_part(args) -> dict:
    results = {}
    for dim in args.dims:
        for size in args.sizes:
            for backend in args.backends:
                for index_type in args.types:
                    key = f"{backend}/{dim}d/{size}/{index_type}"
                    reason = _beyond_this_machine(dim, size, _type(index_type)[0])
                    if reason:
                        results[key] = {"skipped": reason}
                        print(key, reason, flush=True)
                        continue
                    built = ensure_index(backend, dim, size, index_type)
                    exact_neighbours(dim, size)
                    child = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--measure", backend, str(dim),
                                            str(size), index_type], capture_output=True, text=True)
                    if child.returncode:
                        results[key] = dict(built, error=child.stderr.strip().splitlines()[-1][:300])
                    else:
                        results[key] = dict(built, **json.loads(child.stdout.strip().splitlines()[-1]))
                    print(key, json.dumps(_headline(results[key])), flush=True)
    return results


def _beyond_this_machine(dim: int, size: int, index_type: str) -> str:
    """Why an index is not tried here ('' when it is): where a design stops scaling on this machine."""
    memory = describe()["memory_gb"] * 2**30
    if index_type == "hnsw" and size > HNSW_MAX:
        return f"an HNSW of more than {HNSW_MAX:,} images takes hours to build on {os.cpu_count()} cores"
    if index_type in ("flat", "ivf", "hnsw") and size * dim * 4 > 0.6 * memory:
        return (f"{size * dim * 4 / 2**30:.0f} GB of float32 vectors do not fit beside the rest in "
                f"{memory / 2**30:.0f} GB of memory: use sq8, ivfpq or opq")
    return ""


def _headline(figures: dict) -> dict:
    load = figures.get("load", {})
    return {"build_s": figures.get("build_s"), "startup_s": figures.get("startup_s"),
            "recall": figures.get("recall_at_10"), "rss_mb": figures.get("rss_after_mb"),
            **{f"qps@{c}": load.get(str(c), {}).get("qps") for c in CONCURRENCY},
            "p50@1": load.get("1", {}).get("p50_ms"), "error": figures.get("error")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("store", "gateway", "both"), default="both")
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--dims", default="256,1152", help="cxr-mini's and MedSigLIP's embedding sizes")
    parser.add_argument("--types", default="flat,ivf,hnsw,sq8,ivfpq,ivfpq+rerank,opq")
    parser.add_argument("--backends", default="faiss")
    parser.add_argument("--measure", nargs=4, metavar=("BACKEND", "DIM", "SIZE", "TYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        backend, dim, size, index_type = args.measure
        print(json.dumps(measure(backend, int(dim), int(size), index_type)))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.dims = [int(d) for d in args.dims.split(",")]
    args.types = args.types.split(",")
    args.backends = args.backends.split(",")
    path = result_path("scale")
    results = json.loads(path.read_text()) if path.is_file() else {}  # keep today's other runs
    results["machine"] = describe()
    results["threads"] = {"faiss_omp": _omp_threads(), "cpus": os.cpu_count()}
    if args.part in ("store", "both"):
        results.setdefault("store", {}).update(store_part(args))
    if args.part in ("gateway", "both"):
        from benchmarks.scale_gateway import gateway_part

        results.setdefault("gateway", {}).update(gateway_part())
    save("scale", results)
    from benchmarks.scale_report import write_report

    write_report(results, path)
    return 0


def _omp_threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()


if __name__ == "__main__":
    sys.exit(main())
