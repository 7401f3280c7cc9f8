"""FAISS search speed and recall per index type, on synthetic embeddings at archive scale.

  python -m benchmarks.faiss_search [--vectors 1000000] [--hnsw-vectors 100000] [--dim 1152]

Vectors are indexing.synthetic's clustered points (as `cxr index synth` writes). Indexes are built
by the product's own `cxr.store.faiss_index.make_index`; each type is timed on single queries (how the gateway
searches) and its top 10 compared with exact search. Figures go to
benchmarks/results/<date>-<host>-faiss.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np

from benchmarks.machine import describe, result_path
from cxr.store.faiss_index import make_index
from cxr.store.index_types import HNSW_EF_SEARCH, HNSW_M, IVF_NPROBE
from indexing.synthetic import CENTRES, SPREAD, clustered

QUERIES = 200
K = 10


def _measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> dict:
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[np.newaxis], K)
        times.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    return {"search_p50_ms": round(float(np.percentile(times, 50)), 3),
            "search_p95_ms": round(float(np.percentile(times, 95)), 3), f"recall_at_{K}": round(float(recall), 4)}


# Search-time knobs swept for the approximate indexes, the product's default first.
SWEEPS = {"ivf": ("nprobe", (IVF_NPROBE, IVF_NPROBE * 2, IVF_NPROBE // 2)),
          "hnsw": ("efSearch", (HNSW_EF_SEARCH, HNSW_EF_SEARCH * 2, HNSW_EF_SEARCH * 4))}


def _sweep(index: faiss.Index, index_type: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    knob, values = SWEEPS[index_type]
    target = index.hnsw if index_type == "hnsw" else index
    figures = {}
    for value in values:
        setattr(target, knob, value)
        figures[f"{knob}={value}"] = _measure(index, queries, truth)
    setattr(target, knob, values[0])
    return figures


def bench(count: int, dim: int, index_types: list[str]) -> dict:
    vectors = clustered(count, dim, seed=1)[0]
    queries = clustered(QUERIES, dim, seed=2)[0]
    started = time.perf_counter()
    exact = make_index(vectors, "flat")
    _, truth = exact.search(queries, K)
    results = {"ground_truth_s": round(time.perf_counter() - started, 1)}
    for index_type in index_types:
        started = time.perf_counter()
        index = exact if index_type == "flat" else make_index(vectors, index_type)
        built = time.perf_counter() - started
        results[index_type] = dict(_measure(index, queries, truth), vectors=count, build_s=round(built, 1))
        if index_type in SWEEPS:
            results[index_type]["sweep"] = _sweep(index, index_type, queries, truth)
        print(index_type, results[index_type], flush=True)
        if index is not exact:
            del index
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000, help="archive size for flat and ivf (0: skip)")
    parser.add_argument("--hnsw-vectors", type=int, default=100_000,
                        help="archive size for hnsw, 0: skip (its build is the slow part on a small CPU)")
    parser.add_argument("--dim", type=int, default=1152, help="MedSigLIP's embedding size")
    args = parser.parse_args(argv)
    path = result_path("faiss")
    figures = json.loads(path.read_text())["figures"] if path.is_file() else {}  # keep today's other runs
    if args.vectors:
        figures[f"flat_and_ivf_{args.vectors}"] = bench(args.vectors, args.dim, ["flat", "ivf"])
    if args.hnsw_vectors:
        figures[f"hnsw_{args.hnsw_vectors}"] = bench(args.hnsw_vectors, args.dim, ["flat", "hnsw"])
    settings = {"dim": args.dim, "queries": QUERIES, "k": K, "centres": CENTRES, "spread": SPREAD,
                "ivf_nprobe": IVF_NPROBE, "hnsw_m": HNSW_M, "hnsw_ef_search": HNSW_EF_SEARCH,
                "faiss_threads": faiss.omp_get_max_threads()}
    path.write_text(json.dumps({"machine": describe(), "settings": settings, "figures": figures}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
