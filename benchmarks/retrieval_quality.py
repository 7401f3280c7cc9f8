"""Retrieval quality through the real stack: Triton + gateway + FAISS, queried over gRPC.

  python -m benchmarks.retrieval_quality [--model cxr-mini ...] [--seed 0]

On the NIH sample's validation split (by patient; the same split `cxr train` holds out with the
same seed), per model:
- image->image: every validation image queries an index of the validation images; relevant =
  shares a finding label ("No Finding" counts as one); the query's own image is left out.
- text->image: one label prompt per finding ("chest x-ray showing cardiomegaly"); relevant =
  images carrying it; AP per label and their mean.
Each figure sits beside its random-ranking baseline, computed exactly (cxr.ranking_metrics), and the 95th
percentile of mAP over 1000 random rankings: above it, a model beats chance. Results go
to benchmarks/results/<date>-<host>-quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, result_path
from benchmarks.stack import exported, served
from cxr import archives, ranking_metrics, registry
from cxr.archives import Record
from cxr.client import RetrievalClient
from cxr.settings import Settings, load_settings
from training.config import TrainConfig
from training.data import examples_from, humanise, label_prompt, split_by_patient

DEFAULT_MODELS = ("cxr-mini", "medsiglip-tiny")


def validation_records(data_dir: Path, seed: int = TrainConfig.seed,
                       valid_fraction: float = TrainConfig.valid_fraction) -> list[Record]:
    archive = data_dir / "nih800"
    examples = examples_from(archives.nih_labels(archive / "labels.csv", archive))
    return [e.record for e in split_by_patient(examples, valid_fraction, seed)[1]]


MAX_TOP_K = 1000  # the gateway's cap: every ranking must cover the whole gallery for mAP


def search_all(client: RetrievalClient, records: list[Record], bare_labels: bool = False) -> dict:
    """Every task the archive supports, through the gateway: image->image and label prompt->image
    where it has labels (`bare_labels` adds the label alone as query), report->image where it has
    reports."""
    n = len(records)
    if n > MAX_TOP_K:
        raise ValueError(f"{n} images: rank at most {MAX_TOP_K} (the gateway's top_k limit); pass a limit")
    labels = {r.image_id: set(r.labels) for r in records}
    result = {}
    if any(labels.values()):
        result["image_to_image"] = _ranked_task(image_rankings(client, records))
        names = sorted(set().union(*labels.values()))
        result["text_to_image"] = _text_task(client, names, labels, label_prompt)
        if bare_labels:
            result["bare_label_to_image"] = _text_task(client, names, labels, humanise)
    reports = {r.study_uid: r.report for r in records if r.report}
    if reports:
        rankings = []
        for study, text in reports.items():
            hits = client.search_text(text, top_k=n).hits
            rankings.append(np.array([hit.study_uid == study for hit in hits]))
        result["report_to_image"] = _ranked_task(rankings)
    return result


def image_rankings(client: RetrievalClient, records: list[Record]) -> list[np.ndarray]:
    """Per image query: the relevance (shares a label) of every other image, in the gateway's order."""
    labels = {r.image_id: set(r.labels) for r in records}
    rankings = []
    for record in records:
        hits = client.search_image(record.path.read_bytes(), top_k=len(records)).hits
        ids = [hit.image_id for hit in hits if hit.image_id != record.image_id]
        rankings.append(np.array([bool(labels[record.image_id] & labels[i]) for i in ids]))
    return rankings


def text_rankings(client: RetrievalClient, names: list[str], labels: dict[str, set[str]], query) -> list[np.ndarray]:
    """Per finding, queried as `query(name)`: which images in the gateway's order carry it."""
    rankings = []
    for name in names:
        response = client.search_text(query(name), top_k=len(labels))
        rankings.append(np.array([name in labels[hit.image_id] for hit in response.hits]))
    return rankings


def _ranked_task(rankings: list[np.ndarray]) -> dict:
    return {"model": ranking_metrics.summarize(rankings),
            "random": dict(ranking_metrics.random_baseline(rankings),
                           mAP_p95=ranking_metrics.random_map_quantile(rankings))}


def _text_task(client, names: list[str], labels: dict[str, set[str]], query) -> dict:
    """One query per finding; relevant = images carrying it; AP per finding and their mean."""
    n = len(labels)
    rankings = text_rankings(client, names, labels, query)
    per_label = {name: ranking_metrics.average_precision(r) for name, r in zip(names, rankings)}
    per_label_random = {name: ranking_metrics.expected_average_precision(n, int(r.sum()))
                        for name, r in zip(names, rankings)}
    return {"model": {"mAP": float(np.mean(list(per_label.values()))), "per_label_AP": per_label},
            "random": {"mAP": float(np.mean(list(per_label_random.values()))),
                       "mAP_p95": ranking_metrics.random_map_quantile(rankings), "per_label_AP": per_label_random}}


def measure(model_name: str, records: list[Record], base: Settings) -> dict:
    with exported(base, model_name) as settings, served(settings, records):
        with RetrievalClient.from_settings(settings) as client:
            return search_all(client, records)


def table(results: dict[str, dict]) -> str:
    lines = ["| model | image→image mAP | random mean / p95 | R@10 (random) | text→image mAP | random mean / p95 |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        i2i, t2i = r["image_to_image"], r["text_to_image"]
        lines.append(f"| {name} | {i2i['model']['mAP']:.3f} | {i2i['random']['mAP']:.3f} / "
                     f"{i2i['random']['mAP_p95']:.3f} | {i2i['model']['R@10']:.3f} ({i2i['random']['R@10']:.3f}) | "
                     f"{t2i['model']['mAP']:.3f} | {t2i['random']['mAP']:.3f} / {t2i['random']['mAP_p95']:.3f} |")
    return "\n".join(lines)


def per_label_table(result: dict) -> str:
    t2i = result["text_to_image"]
    lines = ["| finding | AP | random |", "|---|---|---|"]
    for name, ap in t2i["model"]["per_label_AP"].items():
        lines.append(f"| {name} | {ap:.3f} | {t2i['random']['per_label_AP'][name]:.3f} |")
    return "\n".join(lines)


def run(models: list[str], seed: int) -> dict:
    base = load_settings()
    records = validation_records(base.data_dir, seed)
    results = {name: measure(name, records, base) for name in models}
    out = {"machine": describe(),
           "settings": {"archive": str(base.data_dir / "nih800"), "split": f"by patient, seed {seed}",
                        "validation_images": len(records), "models": models},
           "results": results}
    path = result_path("quality")
    path.write_text(json.dumps(out, indent=2))
    print(table(results))
    for name, result in results.items():
        print(f"\n{name}: text->image AP per finding\n{per_label_table(result)}")
    print(f"\nwrote {path}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=registry.list_models(),
                        help=f"repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="the validation split's seed")
    args = parser.parse_args(argv)
    run(args.model or list(DEFAULT_MODELS), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
