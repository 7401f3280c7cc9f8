"""Finding suggestions (cxr.suggestions) on the NIH sample's validation split: per finding AUC and expected
calibration error, beside random.

  python -m benchmarks.suggestions [--model cxr-mini] [--seed 0]

The model is exported, Triton started and the whole archive (800 images, train and validation) indexed, as
`cxr index build` does; each validation image (the split `cxr train` holds out and the quality benchmark
measures) is embedded through Triton and searched, its own patient's images left out of its neighbours, as
`cxr index calibrate` does. The validation patients are then cut in two halves (seeded): the calibration
(k chosen on the grid, a map per finding) is fitted on one half and applied to the other, and the other way
round (2-fold cross-fitting), so every probability measured comes from a calibration that never saw its
image. Per finding, within each measured half, then averaged over the two halves (weighted by their images):
AUC beside a random score's (drawn uniform, ~0.5), and ECE (10 equal-width bins) beside the base-rate
predictor's (each image gets the finding's rate in the half that was fitted). Not pooled over the halves: a
near-chance score pooled from two fits is anti-correlated with the truth (a half rich in a finding gets the
other half's lower rate), which would push the AUC below 0.5. A finding with fewer than MIN_POSITIVES
positives in the split is listed but left out of the means: its figures are noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np

from benchmarks.machine import describe, save
from benchmarks.retrieval_quality import validation_records
from benchmarks.stack import exported, served
from cxr import archives, registry, suggestions
from cxr.catalog import ExportedModel
from cxr.settings import load_settings
from cxr.store.faiss_backend import FaissBackend
from cxr.suggestions import Neighbours
from indexing.build import BuildOptions, embed_records
from indexing.calibration import neighbours
from training.config import TrainConfig

BINS = 10
MIN_POSITIVES = 10


def halves(queries: list[Neighbours], patients: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two masks over the queries, whole patients to each side."""
    names = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(names))
    first = {names[i] for i in order[: len(names) // 2]}
    mask = np.array([p in first for p in patients])
    assert len(mask) == len(queries)
    return mask, ~mask


def cross_fit(queries: list[Neighbours], patients: list[str], seed: int) -> dict:
    """Out-of-fold probabilities, base-rate predictions and random scores per finding, with each fold's k."""
    names = suggestions.label_names(queries)
    truth = suggestions.truths(queries, names)
    probability = {name: np.zeros(len(queries)) for name in names}
    base_rate = {name: np.zeros(len(queries)) for name in names}
    folds, measured = [], []
    for fit_mask, apply_mask in zip(halves(queries, patients, seed), reversed(halves(queries, patients, seed))):
        fitting = [q for q, keep in zip(queries, fit_mask) if keep]
        calibration = suggestions.fit(fitting, weighting="similarity")
        applied = [q for q, keep in zip(queries, apply_mask) if keep]
        raw = suggestions.raw_scores(applied, names, calibration.k, calibration.weighting)
        for name in names:
            label_map = calibration.maps.get(name)
            probability[name][apply_mask] = label_map(raw[name]) if label_map else 0.0
            base_rate[name][apply_mask] = truth[name][fit_mask].mean()
        measured.append(apply_mask)
        folds.append({"fitted_on": int(fit_mask.sum()), "k": calibration.k,
                      "mean_auc_by_k": calibration.fitted["mean_auc_by_k"],
                      "methods": {name: m.method for name, m in calibration.maps.items()}})
    rng = np.random.default_rng(seed)
    random_score = {name: rng.random(len(queries)) for name in names}
    return {"names": names, "truth": truth, "probability": probability, "base_rate": base_rate,
            "random": random_score, "folds": folds, "measured": measured}


def per_finding(fitted: dict) -> dict:
    out = {}
    for name in fitted["names"]:
        y = fitted["truth"][name]
        out[name] = {"positives": int(y.sum()), "mean_probability": float(fitted["probability"][name].mean()),
                     "rate": float(y.mean()),
                     "auc": _over_halves(suggestions.auc, fitted["probability"][name], y, fitted["measured"]),
                     "auc_random": _over_halves(suggestions.auc, fitted["random"][name], y, fitted["measured"]),
                     "ece": _over_halves(_ece, fitted["probability"][name], y, fitted["measured"]),
                     "ece_base_rate": _over_halves(_ece, fitted["base_rate"][name], y, fitted["measured"])}
    return out


def _ece(p: np.ndarray, y: np.ndarray) -> float:
    return suggestions.expected_calibration_error(p, y, BINS)


def _over_halves(metric, scores: np.ndarray, truth: np.ndarray, halves_measured: list[np.ndarray]) -> float | None:
    """The metric within each measured half, averaged weighted by the half's images (None where no half has it)."""
    values = [(metric(scores[mask], truth[mask]), int(mask.sum())) for mask in halves_measured]
    values = [(value, weight) for value, weight in values if value is not None]
    if not values:
        return None
    return float(sum(value * weight for value, weight in values) / sum(weight for _, weight in values))


def means(findings: dict) -> dict:
    counted = {n: f for n, f in findings.items() if f["positives"] >= MIN_POSITIVES and f["auc"] is not None}
    return {"findings": sorted(counted),
            **{key: float(np.mean([f[key] for f in counted.values()])) if counted else None
               for key in ("auc", "auc_random", "ece", "ece_base_rate")}}


def table(findings: dict, summary: dict) -> str:
    lines = ["| finding | positives | AUC | random AUC | ECE | base-rate ECE |", "|---|---|---|---|---|---|"]
    for name, f in sorted(findings.items(), key=lambda kv: -kv[1]["positives"]):
        auc = "—" if f["auc"] is None else f"{f['auc']:.3f}"
        rnd = "—" if f["auc_random"] is None else f"{f['auc_random']:.3f}"
        few = "" if f["positives"] >= MIN_POSITIVES else " (too few)"
        lines.append(f"| {name}{few} | {f['positives']} | {auc} | {rnd} | {f['ece']:.3f} | {f['ece_base_rate']:.3f} |")
    if summary["auc"] is not None:
        lines.append(f"| **mean of {len(summary['findings'])} with ≥ {MIN_POSITIVES} positives** | | "
                     f"**{summary['auc']:.3f}** | {summary['auc_random']:.3f} | **{summary['ece']:.3f}** | "
                     f"{summary['ece_base_rate']:.3f} |")
    return "\n".join(lines)


def measure(model_name: str, seed: int) -> dict:
    base = load_settings()
    archive = archives.nih_labels(base.data_dir / "nih800" / "labels.csv", base.data_dir / "nih800")
    valid = [r for r in validation_records(base.data_dir, seed) if r.labels]
    started = time.perf_counter()
    with exported(base, model_name) as settings, served(settings, archive, gateway=False):
        model = ExportedModel.load(settings.model_repository, model_name)
        vectors = embed_records(valid, model, settings, BuildOptions(progress=False, workers=2))
        kept = sorted(vectors)
        store = FaissBackend(settings.index_dir).open(model_name)
        queries = neighbours(store, np.stack([vectors[p] for p in kept]), [valid[p] for p in kept],
                             max(suggestions.K_GRID))
        # The same queries with their patient's other images left in (only the image itself out): what the
        # exclusion costs or spares, on the raw vote.
        with_patient = neighbours(store, np.stack([vectors[p] for p in kept]),
                                  [replace(valid[p], patient_id="") for p in kept], max(suggestions.K_GRID))
        store.close()
    patients = [valid[p].patient_id for p in kept]
    fitted = cross_fit(queries, patients, seed)
    findings = per_finding(fitted)
    return {"raw_vote_mean_auc_by_k": _by_k(queries), "raw_vote_mean_auc_by_k_own_patient_kept": _by_k(with_patient),
            "index_images": len(archive), "validation_images": len(queries),
            "validation_patients": len(set(patients)), "folds": fitted["folds"], "findings": findings,
            "mean": means(findings), "seconds": round(time.perf_counter() - started, 1)}


def _by_k(queries: list[Neighbours]) -> dict[str, float]:
    """The raw vote's mean AUC over findings with >= MIN_POSITIVES positives, on every query, per k of the grid."""
    names = [n for n in suggestions.label_names(queries) if sum(n in q.truth for q in queries) >= MIN_POSITIVES]
    truth = suggestions.truths(queries, names)
    return {str(k): round(suggestions.mean_auc(suggestions.raw_scores(queries, names, k), truth), 4)
            for k in suggestions.K_GRID}


def markdown(model_name: str, result: dict, seed: int) -> str:
    folds = "; ".join(f"fitted on {f['fitted_on']} images: k = {f['k']} (mean AUC by k {f['mean_auc_by_k']})"
                      for f in result["folds"])
    return (f"# Finding suggestions: {model_name}, NIH sample\n\n"
            f"`make bench-suggestions` (python -m benchmarks.suggestions --model {model_name} --seed {seed}).\n\n"
            f"Index: the {result['index_images']} images of nih800 (train and validation). Queries: the "
            f"{result['validation_images']} labelled validation images ({result['validation_patients']} patients; "
            f"split by patient, seed {seed}), their own patient's images left out of their neighbours. "
            "Cross-fitted: the calibration is fitted on one half of the validation patients and measured on the "
            f"other, both ways; {folds}. AUC and ECE ({BINS} equal-width bins) within each measured half, averaged "
            "over the two (weighted by images). Random: a uniform random score's AUC; the base-rate predictor's ECE "
            "(the fitted half's rate of the finding for every image).\n\n"
            f"{table(result['findings'], result['mean'])}\n\n"
            "The raw vote's mean AUC over the findings with enough positives, on all the validation images, by k: "
            f"{result['raw_vote_mean_auc_by_k']} with the query's own patient left out (as served and calibrated); "
            f"{result['raw_vote_mean_auc_by_k_own_patient_kept']} with the patient's other images left in.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cxr-mini", choices=registry.list_models())
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="the validation split's seed")
    args = parser.parse_args(argv)
    result = measure(args.model, args.seed)
    text = markdown(args.model, result, args.seed)
    print(text)
    save("suggestions", {"machine": describe(), "model": args.model, "seed": args.seed, "bins": BINS,
                         "min_positives": MIN_POSITIVES, **result}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
