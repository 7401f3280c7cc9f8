"""Retrieval metrics over ranked lists, and their exact random-ranking baselines.

One module for training's validation and for the benchmarks. A query's ranking is a boolean
array, `True` where the item at that rank is relevant, covering the whole gallery (so average
precision sees every relevant item).

- Recall@K: the share of queries with at least one relevant item in the top K (hit rate).
- MRR: mean of 1 / rank of the first relevant item.
- AP: mean of precision@k over the ranks k of the relevant items; mAP averages AP over queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

DEFAULT_KS = (1, 5, 10)


def average_precision(relevant: np.ndarray) -> float:
    """AP of one full ranking; 0 when nothing is relevant."""
    relevant = np.asarray(relevant, dtype=bool)
    hits = np.flatnonzero(relevant)
    if hits.size == 0:
        return 0.0
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


def reciprocal_rank(relevant: np.ndarray) -> float:
    hits = np.flatnonzero(np.asarray(relevant, dtype=bool))
    return 0.0 if hits.size == 0 else 1.0 / (hits[0] + 1)


def hit_at_k(relevant: np.ndarray, k: int) -> float:
    return float(np.asarray(relevant, dtype=bool)[:k].any())


def summarize(rankings: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """mAP, MRR and Recall@K over queries (queries with no relevant item are skipped)."""
    rankings = [np.asarray(r, dtype=bool) for r in rankings if np.any(r)]
    if not rankings:
        raise ValueError("no query has a relevant item in the gallery")
    out = {"queries": len(rankings),
           "mAP": float(np.mean([average_precision(r) for r in rankings])),
           "MRR": float(np.mean([reciprocal_rank(r) for r in rankings]))}
    out.update({f"R@{k}": float(np.mean([hit_at_k(r, k) for r in rankings])) for k in ks})
    return out


def expected_average_precision(n_items: int, n_relevant: int) -> float:
    """E[AP] when `n_relevant` of `n_items` are placed uniformly at random.

    E[AP] = 1/R sum_k P(rel at k) E[P@k | rel at k] = 1/N (H_N + (R-1)/(N-1) (N - H_N)).
    """
    n, r = n_items, n_relevant
    if r == 0:
        return 0.0
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (harmonic + (r - 1) / (n - 1) * (n - harmonic)) / n


def expected_reciprocal_rank(n_items: int, n_relevant: int) -> float:
    """E[1/rank of the first relevant item] under a uniformly random ranking."""
    n, r = n_items, n_relevant
    if r == 0:
        return 0.0
    # P(first relevant at k) = C(n-k, r-1) / C(n, r)
    total = comb(n, r)
    return sum(comb(n - k, r - 1) / total / k for k in range(1, n - r + 2))


def expected_hit_at_k(n_items: int, n_relevant: int, k: int) -> float:
    """P(at least one relevant item in the top k) under a uniformly random ranking."""
    n, r = n_items, n_relevant
    if r == 0:
        return 0.0
    k = min(k, n)
    return 1.0 - comb(n - r, k) / comb(n, k)


def random_baseline(rankings: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """What `summarize` would return, in expectation, for the same queries ranked at random."""
    shapes = [(len(r), int(np.sum(r))) for r in rankings if np.any(r)]
    if not shapes:
        raise ValueError("no query has a relevant item in the gallery")
    out = {"queries": len(shapes),
           "mAP": float(np.mean([expected_average_precision(n, r) for n, r in shapes])),
           "MRR": float(np.mean([expected_reciprocal_rank(n, r) for n, r in shapes]))}
    out.update({f"R@{k}": float(np.mean([expected_hit_at_k(n, r, k) for n, r in shapes])) for k in ks})
    return out


def rank_by_similarity(query_vectors: np.ndarray, gallery_vectors: np.ndarray,
                       exclude_self: bool = False) -> np.ndarray:
    """Gallery indices ordered by descending inner product, one row per query.

    With `exclude_self` (queries are the gallery), each query's own item is dropped, so a row
    has n - 1 entries.
    """
    scores = query_vectors @ gallery_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")
    if not exclude_self:
        return order
    return np.stack([row[row != i] for i, row in enumerate(order)])


def shares_label(query_labels: Sequence[set[str]], gallery_labels: Sequence[set[str]],
                 order: np.ndarray) -> list[np.ndarray]:
    """Boolean rankings where an item is relevant if it shares a label with its query."""
    return [np.array([bool(query_labels[q] & gallery_labels[g]) for g in row]) for q, row in enumerate(order)]


def random_map_quantile(rankings: Sequence[np.ndarray], quantile: float = 0.95, trials: int = 1000,
                        seed: int = 0) -> float:
    """The `quantile` of mAP over `trials` random shufflings of every query's ranking: a model
    whose mAP is above it beats chance at that level, not just on average."""
    rankings = [np.asarray(r, dtype=bool) for r in rankings if np.any(r)]
    rng = np.random.default_rng(seed)
    totals = np.zeros(trials)
    for ranking in rankings:
        shuffled = np.stack([rng.permutation(ranking) for _ in range(trials)])
        hits = np.cumsum(shuffled, axis=1)
        precision = hits / np.arange(1, ranking.size + 1)
        totals += (precision * shuffled).sum(axis=1) / ranking.sum()
    return float(np.quantile(totals / len(rankings), quantile))
