"""The labeler benchmark's split and scoring (its floor on real reports is in test_labeler.py)."""

import pytest

from benchmarks import labeler_quality
from support import DATA_DIR


def test_the_halves_split_by_uid_stably_and_evenly():
    assert labeler_quality.half("1") == labeler_quality.half("1")
    development = labeler_quality.cases(DATA_DIR / "iu" / "indiana_reports.csv", "development")
    held_back = labeler_quality.cases(DATA_DIR / "iu" / "indiana_reports.csv", "held_back")
    assert not {c.uid for c in development} & {c.uid for c in held_back}
    assert 0.45 < len(development) / (len(development) + len(held_back)) < 0.55


def test_hand_worked_scores():
    truths = [("Effusion",), ("Effusion", "Cardiomegaly"), ("No Finding",), ("No Finding",)]
    predictions = [("Effusion",), ("Effusion",), ("Cardiomegaly",), ("No Finding",)]
    result = labeler_quality.score(truths, predictions)
    effusion, cardiomegaly = result["per_label"]["Effusion"], result["per_label"]["Cardiomegaly"]
    assert (effusion["tp"], effusion["fp"], effusion["fn"], effusion["f1"]) == (2, 0, 0, 1.0)
    assert (cardiomegaly["tp"], cardiomegaly["fp"], cardiomegaly["fn"], cardiomegaly["f1"]) == (0, 1, 1, 0.0)
    assert result["per_label"]["No Finding"]["f1"] == pytest.approx(2 / 3, abs=1e-4)
    # micro over every label: tp 3, fp 1, fn 2
    assert result["micro"]["precision"] == 0.75 and result["micro"]["recall"] == 0.6
    assert result["macro_labels"] == []  # no label has 30 positive reports


def test_macro_counts_only_labels_with_enough_support():
    truths = [("Effusion",)] * 30 + [("Cardiomegaly",)] * 5
    predictions = [("Effusion",)] * 30 + [("No Finding",)] * 5
    result = labeler_quality.score(truths, predictions)
    assert result["macro_labels"] == ["Effusion"] and result["macro_f1"] == 1.0
