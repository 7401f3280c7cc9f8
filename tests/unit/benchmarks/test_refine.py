"""benchmarks.refine's simulated reader on made-up vectors: round 0 is the plain ranking, judged images
leave the residual ranking, and feedback on two clear clusters finds the query's cluster."""

import numpy as np

from benchmarks import refine
from cxr import ranking_metrics


def _clusters(n: int = 40, dim: int = 8, spread: float = 1.5):
    """Two clusters, A and B, with noise enough that plain search mixes them."""
    rng = np.random.default_rng(3)
    centres = np.eye(dim, dtype=np.float32)[:2]
    labels = [{"A"} if i % 2 == 0 else {"B"} for i in range(n)]
    vectors = centres[np.arange(n) % 2] + spread * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def test_round_zero_is_the_plain_ranking_and_feedback_moves_towards_the_query_s_cluster():
    vectors, labels = _clusters()
    figures = refine.feedback_rounds(vectors, labels)
    plain = [np.array([bool(labels[q] & labels[i]) for i in refine._ranking(vectors, vectors[q], leave_out=q)])
             for q in range(len(vectors))]
    assert figures["round_0"]["mAP"] == ranking_metrics.summarize(plain)["mAP"]
    assert figures["round_0"]["mAP_residual"] == figures["round_0"]["mAP"]
    assert figures["round_1"]["mAP"] > figures["round_0"]["mAP"]
    assert all(0 <= r["random_mAP_residual"] <= 1 for r in figures.values())


def test_modifier_figures_cover_every_weight_and_the_plain_query():
    vectors, labels = _clusters()
    a, b = np.eye(vectors.shape[1], dtype=np.float32)[:2]
    prompts = {"A": a + 0.7 * b, "B": b + 0.7 * a}  # each prompt leans towards the other finding too
    with_text = refine.with_text(vectors, [set(found) for found in labels], prompts)
    assert list(with_text) == ["plain"] + [f"w={w:g}" for w in refine.WEIGHTS]
    assert with_text["w=2"]["share_with_finding"] > with_text["plain"]["share_with_finding"]
    excluded = refine.exclude_text(vectors, labels, prompts)
    assert excluded["w=1"]["share_with_excluded"] < excluded["plain"]["share_with_excluded"]
