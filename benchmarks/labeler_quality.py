"""`make bench-labeler`: the report labeler (cxr.reports.labeler) against the IU-Xray annotators.

  python -m benchmarks.labeler_quality [--reports-csv ../shared/data/iu/indiana_reports.csv]
                                       [--halves development held_back]

Truth: each report's manual MeSH annotation, mapped to the index's labels by cxr.reports.iu_terms.
Cases: reports with findings or impression text whose annotation is not "No Indexing". Prediction:
labels() of findings + impression (as cxr.archives.Record.report joins them).

Halves by uid: a report is in the development half when the SHA-256 of its uid (UTF-8) is even as
an integer, in the held-back half otherwise. The vocabulary was tuned on the development half only.

Per label: precision, recall, F1 and support (reports with the label in the truth). Micro F1 over all
15 labels' decisions; micro F1 over the 14 findings alone (No Finding, the easy majority, left
out); macro F1 over the labels with at least MACRO_MIN_SUPPORT positive reports in that half. Both
uncertainty policies: uncertain counts as positive (U-Ones, the default of labels()) and as
negative (U-Zeros). Speed: reports per second over every report, one core.
JSON and Markdown go to benchmarks/results/<date>-<host>-labeler.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.machine import describe, save
from cxr.reports import iu_terms, labeler
from cxr.settings import Settings

HALVES = ("development", "held_back")
MACRO_MIN_SUPPORT = 30
POLICIES = {"uncertain_positive": True, "uncertain_negative": False}


@dataclass(frozen=True)
class Case:
    uid: str
    text: str  # patient data: read here, never written out
    truth: tuple[str, ...]


def half(uid: str) -> str:
    """development when SHA-256(uid) is even, held_back otherwise."""
    return HALVES[int(hashlib.sha256(uid.encode()).hexdigest(), 16) % 2]


def cases(reports_csv: Path, which: str) -> list[Case]:
    """The annotated reports with text in half `which`."""
    with reports_csv.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    found = []
    for row in rows:
        text = " ".join(part.strip() for part in (row["findings"], row["impression"]) if part.strip())
        if text and iu_terms.annotated(row["MeSH"]) and half(row["uid"]) == which:
            found.append(Case(row["uid"], text, iu_terms.labels(row["MeSH"])))
    return found


def f1(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(score, 4)}


def score(truths: list[tuple[str, ...]], predictions: list[tuple[str, ...]]) -> dict:
    """Per-label counts and F1, micro F1 (all labels; findings alone) and macro F1 (labels with support)."""
    assert len(truths) == len(predictions)
    per_label = {}
    for label in labeler.LABELS:
        tp = sum(label in t and label in p for t, p in zip(truths, predictions))
        fp = sum(label not in t and label in p for t, p in zip(truths, predictions))
        fn = sum(label in t and label not in p for t, p in zip(truths, predictions))
        per_label[label] = {"support": tp + fn, "tp": tp, "fp": fp, "fn": fn, **f1(tp, fp, fn)}
    counted = [label for label, row in per_label.items() if row["support"] >= MACRO_MIN_SUPPORT]
    return {
        "reports": len(truths),
        "per_label": per_label,
        "micro": _micro(per_label, labeler.LABELS),
        "micro_findings": _micro(per_label, labeler.FINDINGS),
        "macro_f1": round(sum(per_label[label]["f1"] for label in counted) / len(counted), 4) if counted else 0.0,
        "macro_labels": counted,
    }


def _micro(per_label: dict, labels: tuple[str, ...]) -> dict:
    return f1(*(sum(per_label[label][key] for label in labels) for key in ("tp", "fp", "fn")))


def evaluate(found: list[Case], uncertain: bool = labeler.UNCERTAIN_IS_POSITIVE) -> dict:
    return score([case.truth for case in found], [labeler.labels(case.text, uncertain) for case in found])


def speed(texts: list[str], rounds: int = 3) -> float:
    """Reports per second through read(), the best of `rounds` passes."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for text in texts:
            labeler.read(text)
        best = min(best, time.perf_counter() - start)
    return round(len(texts) / best)


def run(reports_csv: Path, halves: tuple[str, ...]) -> dict:
    by_half = {which: cases(reports_csv, which) for which in halves}
    results = {
        "machine": describe(),
        "settings": {"reports_csv": str(reports_csv), "split": "development: SHA-256(uid) even; held_back: odd",
                     "macro_min_support": MACRO_MIN_SUPPORT, "default_policy": "uncertain_positive"
                     if labeler.UNCERTAIN_IS_POSITIVE else "uncertain_negative", "max_chars": labeler.v.MAX_CHARS},
        "halves": {which: {policy: evaluate(found, uncertain) for policy, uncertain in POLICIES.items()}
                   for which, found in by_half.items()},
        "reports_per_s": speed([case.text for found in by_half.values() for case in found]),
    }
    return results


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [f"# Report labeler against the IU-Xray annotations, {m['date']} on {m['host']}", "",
             f"{m['cpu']}, Python {m['python']}. Truth: MeSH mapped by cxr.reports.iu_terms; split: "
             f"{s['split']}. Macro F1 over labels with >= {s['macro_min_support']} positive reports in the half. "
             f"Speed: {results['reports_per_s']} reports/s (one core, read() of findings + impression).", ""]
    for which, policies in results["halves"].items():
        for policy, r in policies.items():
            default = " (the default)" if policy == s["default_policy"] else ""
            lines += [f"## {which}, {policy.replace('_', ' ')}{default}: {r['reports']} reports", "",
                      f"micro F1 {r['micro']['f1']:.3f} (P {r['micro']['precision']:.3f}, R {r['micro']['recall']:.3f}); "
                      f"micro F1 of the 14 findings {r['micro_findings']['f1']:.3f}; macro F1 {r['macro_f1']:.3f} "
                      f"over {len(r['macro_labels'])} labels", "",
                      "| label | support | precision | recall | F1 | in macro |", "|---|---|---|---|---|---|"]
            for label, row in r["per_label"].items():
                lines.append(f"| {label} | {row['support']} | {row['precision']:.3f} | {row['recall']:.3f} | "
                             f"{row['f1']:.3f} | {'yes' if label in r['macro_labels'] else ''} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports-csv", type=Path, default=Settings().data_dir / "iu" / "indiana_reports.csv")
    parser.add_argument("--halves", nargs="+", choices=HALVES, default=list(HALVES))
    args = parser.parse_args(argv)
    results = run(args.reports_csv, tuple(args.halves))
    text = markdown(results)
    print(text)
    save("labeler", results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
