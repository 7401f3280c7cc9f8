import itertools

import numpy as np
import pytest

from cxr import ranking_metrics


def test_hand_worked_ranking():
    # relevant at ranks 1, 3 and 6 of 6
    ranking = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    assert ranking_metrics.average_precision(ranking) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert ranking_metrics.reciprocal_rank(ranking) == 1.0
    assert ranking_metrics.reciprocal_rank(np.array([0, 0, 1, 1], dtype=bool)) == pytest.approx(1 / 3)
    assert ranking_metrics.hit_at_k(np.array([0, 0, 1], dtype=bool), 2) == 0.0
    assert ranking_metrics.hit_at_k(np.array([0, 0, 1], dtype=bool), 3) == 1.0


def test_summarize_two_queries_and_skips_queries_without_relevant_items():
    rankings = [np.array([0, 1, 0, 0], dtype=bool), np.array([1, 0, 0, 1], dtype=bool),
                np.zeros(4, dtype=bool)]
    out = ranking_metrics.summarize(rankings, ks=(1, 2))
    assert out["queries"] == 2
    assert out["mAP"] == pytest.approx((0.5 + (1 + 0.5) / 2) / 2)
    assert out["MRR"] == pytest.approx((0.5 + 1) / 2)
    assert out["R@1"] == 0.5 and out["R@2"] == 1.0


def test_summarize_without_any_relevant_item_is_an_error():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        ranking_metrics.summarize([np.zeros(3, dtype=bool)])


@pytest.mark.parametrize("n, r", [(1, 1), (4, 1), (5, 2), (6, 3), (7, 7)])
def test_random_baselines_equal_the_mean_over_every_ranking(n, r):
    rankings = []
    for positions in itertools.combinations(range(n), r):
        ranking = np.zeros(n, dtype=bool)
        ranking[list(positions)] = True
        rankings.append(ranking)
    exact = ranking_metrics.summarize(rankings, ks=(1, 3))
    baseline = ranking_metrics.random_baseline([rankings[0]], ks=(1, 3))
    for key in ("mAP", "MRR", "R@1", "R@3"):
        assert baseline[key] == pytest.approx(exact[key]), key


def test_rank_by_similarity_excludes_self_and_shares_label():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    order = ranking_metrics.rank_by_similarity(vectors, vectors, exclude_self=True)
    assert order.tolist() == [[1, 2], [0, 2], [1, 0]]
    relevant = ranking_metrics.shares_label([{"a"}, {"a", "b"}, {"b"}], [{"a"}, {"a", "b"}, {"b"}], order)
    assert [r.tolist() for r in relevant] == [[True, False], [True, True], [True, False]]


def test_random_map_quantile_brackets_the_expected_random_map():
    rankings = [np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=bool)] * 20
    expected = ranking_metrics.random_baseline(rankings)["mAP"]
    low, high = ranking_metrics.random_map_quantile(rankings, 0.05), ranking_metrics.random_map_quantile(rankings, 0.95)
    assert low < expected < high
    assert ranking_metrics.random_map_quantile(rankings, 0.5) == pytest.approx(expected, abs=0.02)
