"""Validation retrieval metrics of a dual encoder, in process, each epoch.

The same tasks the benchmarks run through the gateway: image->image (relevant = shares a finding
label), label prompt->image (relevant = carries the label) and, where the archive has reports,
report->image (relevant = an image of the same study).
"""

from __future__ import annotations

import numpy as np
import torch

from cxr import ranking_metrics
from training.data import Example, label_prompt
from training.dual_encoder import DualEncoder


@torch.no_grad()
def embed_images(model: DualEncoder, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    chunks = [model.embed_images(pixels[i:i + batch_size].float()) for i in range(0, len(pixels), batch_size)]
    return torch.cat(chunks).numpy()


@torch.no_grad()
def evaluate(model: DualEncoder, pixels: torch.Tensor, examples: list[Example]) -> dict:
    images = embed_images(model, pixels)
    labels = [set(e.record.labels) for e in examples]
    result: dict = {}
    if any(labels):
        order = ranking_metrics.rank_by_similarity(images, images, exclude_self=True)
        result["image_to_image"] = ranking_metrics.summarize(ranking_metrics.shares_label(labels, labels, order))
        result["text_to_image"] = _label_prompts(model, images, labels)
    reports = [e.report for e in examples]
    if any(reports):
        result["report_to_image"] = _reports(model, images, examples)
    result["score"] = float(np.mean([task["mAP"] for task in result.values()]))
    return result


def _label_prompts(model: DualEncoder, images: np.ndarray, labels: list[set[str]]) -> dict:
    names = sorted(set().union(*labels))
    prompts = model.embed_texts([label_prompt(name) for name in names]).numpy()
    order = ranking_metrics.rank_by_similarity(prompts, images)
    per_label = {name: ranking_metrics.average_precision(np.array([name in labels[g] for g in row]))
                 for name, row in zip(names, order)}
    return {"mAP": float(np.mean(list(per_label.values()))), "per_label_AP": per_label}


def _reports(model: DualEncoder, images: np.ndarray, examples: list[Example]) -> dict:
    queries = {e.record.study_uid: e.report for e in examples if e.report}
    studies = [e.record.study_uid for e in examples]
    vectors = model.embed_texts(list(queries.values())).numpy()
    order = ranking_metrics.rank_by_similarity(vectors, images)
    return ranking_metrics.summarize([np.array([studies[g] == uid for g in row]) for uid, row in zip(queries, order)])
