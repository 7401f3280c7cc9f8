"""The neighbours' vote and its calibration: probabilities per label, monotone, in [0, 1], following the
fitted map, kept as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr import suggestions
from cxr.suggestions import Calibration, LabelMap, Neighbours, vote


def test_vote_weights_neighbours_by_similarity_and_counts_them():
    voted = vote([0.9, 0.6, 0.3, 0.1], [["Effusion"], ["Effusion", "Mass"], [], ["Mass"]], k=3)
    assert voted.scores == pytest.approx({"Effusion": 1.5 / 1.8, "Mass": 0.6 / 1.8})
    assert voted.counts == {"Effusion": 2, "Mass": 1}  # the fourth neighbour is past k


def test_uniform_vote_and_negative_similarities():
    assert vote([0.9, 0.1], [["A"], []], k=2, weighting="uniform").scores == {"A": 0.5}
    assert vote([-0.2, -0.5], [["A"], []], k=2).scores == {"A": 0.5}  # no positive weight: each counts alike
    with pytest.raises(ValueError, match="weighting"):
        vote([1.0], [["A"]], k=1, weighting="softmax")


def test_isotonic_fit_is_monotone_and_pools_violators():
    xs, ys = suggestions.isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) >= 0)
    assert np.interp([0.2, 0.3], xs, ys) == pytest.approx([0.5, 0.5])  # the violating pair pooled
    assert np.interp([0.1, 0.4], xs, ys) == pytest.approx([0.0, 1.0])


def _noisy(rng, n, base):
    raw = rng.random(n)
    return raw, (rng.random(n) < base + 0.6 * raw).astype(float)


@pytest.mark.parametrize("n, method", [(400, "isotonic"), (30, "platt")])
def test_label_map_is_monotone_in_unit_interval(n, method):
    raw, truth = _noisy(np.random.default_rng(0), n, 0.1)
    label_map = LabelMap.fit(raw, truth)
    assert label_map.method == method
    grid = np.linspace(-0.5, 1.5, 201)
    probabilities = label_map(grid)
    assert np.all(np.diff(probabilities) >= -1e-12)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    assert probabilities[-1] > probabilities[0]  # it learned that a higher score means more likely


def test_platt_of_a_label_running_the_wrong_way_is_its_base_rate():
    raw = np.linspace(0, 1, 20)
    a, b = suggestions.platt(raw, (raw < 0.25).astype(float))
    assert a == 0.0 and 1 / (1 + np.exp(-b)) == pytest.approx(6 / 22)


def _queries(rng, n=300):
    """Queries whose neighbours carry their true labels more often than chance, more so the nearer they are."""
    out = []
    for _ in range(n):
        truth = frozenset(name for name, rate in (("Effusion", 0.3), ("Mass", 0.15)) if rng.random() < rate)
        labels = tuple(tuple(name for name in ("Effusion", "Mass")
                             if rng.random() < (0.5 if name in truth else 0.15) * (1 - i / 60))
                       for i in range(60))
        out.append(Neighbours(tuple(np.linspace(0.95, 0.5, 60)), labels, truth))
    return out


def test_fit_chooses_k_on_the_grid_and_follows_its_maps():
    queries = _queries(np.random.default_rng(1))
    calibration = suggestions.fit(queries, grid=(5, 20, 50))
    assert calibration.k in (5, 20, 50)
    assert set(calibration.fitted["mean_auc_by_k"]) == {"5", "20", "50"}
    assert calibration.fitted["mean_auc_by_k"][str(calibration.k)] == max(calibration.fitted["mean_auc_by_k"].values())
    query = queries[0]
    found = calibration.suggest(query.similarities, query.labels)
    voted = vote(query.similarities, query.labels, calibration.k)
    assert {s.label for s in found} == set(voted.scores)
    for suggestion in found:
        assert suggestion.probability == pytest.approx(float(calibration.maps[suggestion.label](
            voted.scores[suggestion.label])))
        assert suggestion.neighbours == voted.counts[suggestion.label]
        assert 0 <= suggestion.probability <= 1
    assert [s.probability for s in found] == sorted((s.probability for s in found), reverse=True)


def test_probabilities_are_per_label_not_a_distribution():
    """Each label is calibrated alone: with every neighbour carrying both findings, both are likely."""
    maps = {"Effusion": LabelMap("isotonic", (0.0, 1.0), (0.1, 0.9)), "Mass": LabelMap("platt", a=4.0, b=-1.0)}
    calibration = Calibration(3, "similarity", maps)
    found = calibration.suggest([0.9, 0.8, 0.7], [["Effusion", "Mass"]] * 3)
    assert {s.label: s.neighbours for s in found} == {"Effusion": 3, "Mass": 3}
    assert sum(s.probability for s in found) > 1.5
    assert calibration.probabilities({})["Effusion"] == pytest.approx(0.1)  # no voter: the map at 0


def test_labels_without_a_map_are_not_suggested():
    calibration = Calibration(2, "uniform", {"Effusion": LabelMap("platt", a=1.0, b=0.0)})
    assert [s.label for s in calibration.suggest([0.9, 0.8], [["Effusion", "Hernia"], []])] == ["Effusion"]


def test_calibration_round_trips_through_json_and_refuses_bad_maps():
    calibration = suggestions.fit(_queries(np.random.default_rng(2), 200), grid=(5, 10))
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration
    bad = calibration.to_dict()
    bad["labels"]["Effusion"] = {"method": "isotonic", "x": [0.0, 1.0], "y": [0.9, 0.1]}
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration.from_dict(bad)
    with pytest.raises(ValueError, match="format"):
        Calibration.from_dict(dict(calibration.to_dict(), format=99))
    with pytest.raises(ValueError, match="not a calibration"):
        Calibration.from_dict({"format": 1})


def test_auc_and_expected_calibration_error():
    assert suggestions.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert suggestions.auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert suggestions.auc([0.1, 0.2], [1, 1]) is None
    assert suggestions.expected_calibration_error(np.array([0.2] * 10), np.array([1, 1] + [0] * 8)) == \
        pytest.approx(0.0)
    assert suggestions.expected_calibration_error(np.array([0.95, 0.05]), np.array([0, 1])) == pytest.approx(0.95)
