"""The index types and the numbers that size them, the same for both backends; no faiss import, so the
Milvus backend and the command line do not load FAISS. Inner product on L2-normalised vectors (cosine)
throughout.

  flat    exact; 4 bytes per dimension per image
  ivf     inverted lists of full vectors (nprobe of sqrt(n) lists searched)
  hnsw    a graph of full vectors; fastest per query, slowest to build
  sq8     inverted lists of 8-bit scalar-quantised vectors: 1 byte per dimension
  ivfpq   inverted lists of product-quantised codes: 1 byte per 8 dimensions
  opq     ivfpq after a learned rotation (OPQ), which keeps more recall at the same size (FAISS only)

The compressed types (sq8, ivfpq, opq) can keep the full vectors on disk beside them to re-rank
their best candidates exactly (`rerank`, FAISS only); recall@10 against exact search per type is
measured by `make bench-scale`.
"""

from __future__ import annotations

import math

INDEX_TYPES = ("flat", "ivf", "hnsw", "sq8", "ivfpq", "opq")
COMPRESSED = ("sq8", "ivfpq", "opq")
HNSW_M = 32
HNSW_EF_SEARCH = 128
# 4 sqrt(n) lists (FAISS's guidance is 4 to 16 sqrt(n)), 16 of them searched: on 1M synthetic
# 256-d vectors, 0.4 ms a query at recall@10 1.0, against 2.8 ms with sqrt(n) lists and nprobe 32
# (make bench-scale). Capped so that training stays minutes, not hours, at ten million.
IVF_LISTS_PER_SQRT_N = 4
IVF_MAX_LISTS = 4096
IVF_NPROBE = 16
DIMS_PER_PQ_CODE = 8


# The fewest images a type can train on: ivfpq's sub-quantizers have 2**pq_bits >= 16 centroids, and FAISS's
# OPQ rotation trains 8-bit codes (256 centroids) whatever pq_bits says. FAISS stops with a bare RuntimeError
# below these.
MIN_IMAGES = {"ivfpq": 2 ** 4, "opq": 2 ** 8}


def check_count(index_type: str, count: int) -> None:
    """Refuse, with the remedy, an index type that cannot train on `count` images."""
    from cxr.store.errors import TooFewToTrainError

    needed = MIN_IMAGES.get(index_type, 0)
    if count < needed:
        raise TooFewToTrainError(f"--index-type {index_type} learns its codes from the archive and needs at least "
                                 f"{needed} images, not {count}: use flat (exact, and fast at this size) or ivf")


def nlist_for(count: int) -> int:
    lists = min(IVF_LISTS_PER_SQRT_N * int(math.sqrt(count)), IVF_MAX_LISTS)
    return max(1, min(lists, count // 39 or 1))  # FAISS wants >= 39 points per list


def pq_bits(count: int) -> int:
    """8-bit codes (256 centroids per sub-quantizer) need ~10,000 training vectors; fewer bits below that."""
    return int(min(8, max(4, math.floor(math.log2(max(count, 1) / 39)))))


def pq_codes(dim: int) -> int:
    codes = max(1, dim // DIMS_PER_PQ_CODE)
    while dim % codes:
        codes -= 1
    return codes
