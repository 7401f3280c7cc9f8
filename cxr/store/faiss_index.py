"""The FAISS index of each index type (cxr.store.index_types): how it is built, trained and searched.
Importing it sets FAISS's batch-search thresholds for the whole process (see below)."""

from __future__ import annotations

import faiss
import numpy as np

from cxr.store.index_types import HNSW_EF_SEARCH, HNSW_M, INDEX_TYPES, IVF_NPROBE, nlist_for, pq_bits, pq_codes

# k-means on a sample of 64 points per list, 10 iterations: training on all of a million 1152-d
# vectors, or FAISS's 25 iterations, would take hours on a small CPU for no measurable recall gain.
IVF_TRAIN_POINTS_PER_LIST = 64
IVF_TRAIN_ITERATIONS = 10
# Past two million images, a flat coarse quantizer makes adding vectors cost n x nlist dot
# products; an HNSW over the centroids finds each vector's list in a few hundred (recall@10 ~0.02
# lower at 1M, measured).
HNSW_QUANTIZER_FROM = 2_000_000
# Exact search of a batch: FAISS switches to matrix products (reading the vectors once for the
# whole batch) only from 128,000 queries by default, in blocks of 1,024 vectors. From 4 queries, in
# blocks of 65,536: a batch of 64 queries over 1M 256-d vectors in 0.43 s instead of ~5 s here.
faiss.cvar.distance_compute_blas_threshold = 4
faiss.cvar.distance_compute_blas_database_bs = 65_536


def factory_string(index_type: str, dim: int, count: int) -> str:
    nlist = nlist_for(count)
    coarse = f"IVF{nlist}_HNSW32" if count >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    pq = f"PQ{pq_codes(dim)}x{pq_bits(count)}"
    return {"flat": "Flat", "hnsw": f"HNSW{HNSW_M},Flat", "ivf": f"{coarse},Flat", "sq8": f"{coarse},SQ8",
            "ivfpq": f"{coarse},{pq}", "opq": f"OPQ{pq_codes(dim)},{coarse},{pq}"}[index_type]


def empty_index(index_type: str, dim: int, count: int) -> faiss.Index:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type {index_type!r} is not one of {INDEX_TYPES}")
    index = faiss.index_factory(dim, factory_string(index_type, dim, count), faiss.METRIC_INNER_PRODUCT)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        ivf.cp.niter = IVF_TRAIN_ITERATIONS
        ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def training_size(index: faiss.Index) -> int:
    """How many vectors training needs (0: none)."""
    if index.is_trained:
        return 0
    ivf = ivf_of(index)
    return max(ivf.nlist * IVF_TRAIN_POINTS_PER_LIST, 65_536) if ivf is not None else 65_536


def ivf_of(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def make_index(vectors: np.ndarray, index_type: str, use_gpu: bool = False) -> faiss.Index:
    """A CPU index over `vectors` (float32 [n, dim], L2-normalised) with ids 0..n-1. With `use_gpu`
    and faiss-gpu, flat and IVF indexes are trained and filled on the GPU, then stored for the CPU."""
    index = empty_index(index_type, vectors.shape[1], len(vectors))
    if use_gpu and index_type in ("flat", "ivf") and gpu_available():
        on_gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        on_gpu.train(vectors)
        on_gpu.add(vectors)
        return faiss.index_gpu_to_cpu(on_gpu)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def search_parameters(index: faiss.Index, selector=None, nprobe: int | None = None):
    """Parameters carrying a filter (an IDSelector) and the index's own search knobs."""
    ivf = ivf_of(index)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.SearchParametersPreTransform(index_params=search_parameters(index.index, selector, nprobe))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe or ivf.nprobe)
    return faiss.SearchParameters(sel=selector)
