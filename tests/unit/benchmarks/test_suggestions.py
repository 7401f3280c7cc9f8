"""The suggestions benchmark's cross-fitting: whole patients to each half, every probability from the half that
did not fit it, the random and base-rate references beside."""

import numpy as np

from benchmarks import suggestions as bench
from cxr.suggestions import Neighbours


def _queries(n=120):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        truth = frozenset({"Effusion"} if i % 3 == 0 else ())
        labels = tuple(("Effusion",) if rng.random() < (0.6 if truth else 0.1) else () for _ in range(50))
        out.append(Neighbours(tuple(np.linspace(0.9, 0.4, 50)), labels, truth))
    return out


def test_halves_keep_patients_whole():
    patients = [f"p{i // 3}" for i in range(30)]
    first, second = bench.halves(_queries(30), patients, seed=0)
    assert (first ^ second).all() and 0 < first.sum() < 30
    assert not {p for p, f in zip(patients, first) if f} & {p for p, s in zip(patients, second) if s}


def test_cross_fitted_figures_beat_random_where_the_neighbours_carry_the_finding():
    queries = _queries()
    fitted = bench.cross_fit(queries, [f"p{i // 2}" for i in range(len(queries))], seed=0)
    assert len(fitted["folds"]) == 2 and all(f["k"] in (5, 10, 20, 50) for f in fitted["folds"])
    findings = bench.per_finding(fitted)
    effusion = findings["Effusion"]
    assert effusion["positives"] == 40 and effusion["auc"] > 0.9 and 0.3 < effusion["auc_random"] < 0.7
    assert 0 <= effusion["ece"] <= 1 and effusion["ece_base_rate"] < 0.2
    summary = bench.means(findings)
    assert summary["findings"] == ["Effusion"] and "| Effusion | 40 |" in bench.table(findings, summary)
