"""Refining a search, measured on the NIH validation split (the split benchmarks.retrieval_quality and
`cxr train` hold out: by patient, the same seed), with the model's towers in-process (PyTorch, the
exported checkpoint's weights and the gateway's preprocessing) and the gateway's own refine code
(gateway.refine):

- relevance feedback: every validation image queries the others (itself left out; relevant = shares a
  finding label, "No Finding" counting as one, as in retrieval_quality). Each round the simulated reader
  marks the 10 best results not judged yet, relevant if they share a label with the query, else not
  relevant; the next round's query is Rocchio's from the original query and every mark so far (what a
  client sends). mAP after 0-3 rounds over the whole ranking, and over the images not judged yet
  (residual: the marked images moving up counts for nothing), beside random.
- with_text: for each finding and each query image that does not carry it, the share of the top 10
  carrying the finding and their mean cosine to the query image, plain and with the finding's prompt added
  at each weight.
- exclude_text: for each pair of findings (F, G), the text query for F with G's prompt excluded: the share
  of the top 10 carrying G and carrying F, plain and at each weight.

  python -m benchmarks.refine [--model cxr-mini] [--seed 0]      (make bench-refine)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.machine import describe, save
from benchmarks.retrieval_quality import validation_records
from cxr import ranking_metrics, registry
from cxr.archives import Record
from cxr.images import preprocess
from cxr.settings import load_settings
from export.families import load_encoder
from export.onnx_export import ImageTower, TextTower
from export.repository import resolve_source
from gateway import refine
from training.config import TrainConfig
from training.data import label_prompt

ROUNDS = 3
SHOWN = 10  # results a reader judges per round
WEIGHTS = (0.25, 0.5, 1.0, 2.0)
MIN_CARRIERS = 5  # findings with fewer validation images are left out of the modifier figures


class Towers:
    def __init__(self, model: str):
        settings = load_settings()
        self.spec = registry.get_model(model)
        self.encoder = load_encoder(self.spec, resolve_source(self.spec, settings, None))
        self.image_tower = ImageTower(self.encoder.image_features, self.spec).eval()
        self.text_tower = TextTower(self.encoder.text_features).eval()

    @torch.inference_mode()
    def images(self, records: list[Record], batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(records), batch):
            pixels = np.stack([preprocess(r.path.read_bytes(), self.spec.image_size)
                               for r in records[start:start + batch]])
            out.append(self.image_tower(torch.tensor(pixels)).numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.inference_mode()
    def texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.encoder.tokenize(texts)
        return self.text_tower(*(torch.from_numpy(tokens[n]) for n in self.spec.text_inputs)).numpy().astype(np.float32)


def _ranking(index: np.ndarray, query: np.ndarray, leave_out: int | None = None) -> np.ndarray:
    order = np.argsort(-(index @ query), kind="stable")
    return order if leave_out is None else order[order != leave_out]


def feedback_rounds(vectors: np.ndarray, labels: list[set[str]]) -> dict:
    """mAP after 0..ROUNDS rounds of simulated feedback, whole and residual rankings, beside random."""
    whole, residual = [[] for _ in range(ROUNDS + 1)], [[] for _ in range(ROUNDS + 1)]
    for q in range(len(vectors)):
        relevant = np.array([bool(labels[q] & other) for other in labels])
        marked_relevant: list[int] = []
        marked_not: list[int] = []
        for done in range(ROUNDS + 1):
            query = refine.rocchio(vectors[q], vectors[marked_relevant], vectors[marked_not]) if done else vectors[q]
            order = _ranking(vectors, query, leave_out=q)
            judged = set(marked_relevant) | set(marked_not)
            unjudged = np.array([i for i in order if i not in judged])
            whole[done].append(relevant[order])
            residual[done].append(relevant[unjudged])
            for i in unjudged[:SHOWN]:
                (marked_relevant if relevant[i] else marked_not).append(int(i))
    return {f"round_{r}": {"mAP": ranking_metrics.summarize(whole[r])["mAP"],
                           "mAP_residual": ranking_metrics.summarize(residual[r])["mAP"],
                           "random_mAP": ranking_metrics.random_baseline(whole[r])["mAP"],
                           "random_mAP_residual": ranking_metrics.random_baseline(residual[r])["mAP"]}
            for r in range(ROUNDS + 1)}


def _findings(labels: list[set[str]]) -> list[str]:
    names = sorted(set().union(*labels) - {"No Finding"})
    return [n for n in names if sum(n in found for found in labels) >= MIN_CARRIERS]


def with_text(vectors: np.ndarray, labels: list[set[str]], prompts: dict[str, np.ndarray]) -> dict:
    """Share of the top 10 carrying the asked finding, and their mean cosine to the query image."""
    figures = {}
    for weight in (0.0, *WEIGHTS):
        shares, similarities = [], []
        for finding, words in prompts.items():
            for q in (i for i, found in enumerate(labels) if finding not in found):
                query = refine.steered(vectors[q], words, weight) if weight else vectors[q]
                top = _ranking(vectors, query, leave_out=q)[:SHOWN]
                shares.append(np.mean([finding in labels[i] for i in top]))
                similarities.append(float(np.mean(vectors[top] @ vectors[q])))
        figures["plain" if weight == 0 else f"w={weight:g}"] = {
            "share_with_finding": float(np.mean(shares)), "mean_cosine_to_query": float(np.mean(similarities)),
            "queries": len(shares)}
    return figures


def exclude_text(vectors: np.ndarray, labels: list[set[str]], prompts: dict[str, np.ndarray]) -> dict:
    """Text query F minus prompt G: share of the top 10 carrying G (should fall) and F (should hold)."""
    figures = {}
    for weight in (0.0, *WEIGHTS):
        excluded, asked = [], []
        for f, f_words in prompts.items():
            for g, g_words in prompts.items():
                if f == g:
                    continue
                query = refine.steered(f_words, g_words, -weight) if weight else refine.normalised(f_words)
                top = _ranking(vectors, query)[:SHOWN]
                excluded.append(np.mean([g in labels[i] for i in top]))
                asked.append(np.mean([f in labels[i] for i in top]))
        figures["plain" if weight == 0 else f"w={weight:g}"] = {
            "share_with_excluded": float(np.mean(excluded)), "share_with_asked": float(np.mean(asked)),
            "pairs": len(excluded)}
    return figures


def markdown(model: str, out: dict) -> str:
    lines = [f"# Refine: {model}, NIH validation split ({out['settings']['validation_images']} images)", "",
             "`make bench-refine` (python -m benchmarks.refine); weights in gateway/refine.py.", "",
             f"## Relevance feedback (Rocchio α={refine.ROCCHIO_ALPHA:g}, β={refine.ROCCHIO_BETA:g}, "
             f"γ={refine.ROCCHIO_GAMMA:g}; {SHOWN} results judged per round)", "",
             "| rounds | mAP | random | mAP residual | random residual |", "|---|---|---|---|---|"]
    for name, r in out["feedback"].items():
        lines.append(f"| {name.split('_')[1]} | {r['mAP']:.3f} | {r['random_mAP']:.3f} | {r['mAP_residual']:.3f} | "
                     f"{r['random_mAP_residual']:.3f} |")
    lines += ["", "## with_text on an image query (share of the top 10 carrying the finding asked for)", "",
              "| weight | share with finding | mean cosine to the query image |", "|---|---|---|"]
    for name, r in out["with_text"].items():
        lines.append(f"| {name} | {r['share_with_finding']:.3f} | {r['mean_cosine_to_query']:.3f} |")
    lines += ["", "## exclude_text on a text query (pairs of findings F, G: query F, exclude G)", "",
              "| weight | share with G (excluded) | share with F (asked) |", "|---|---|---|"]
    for name, r in out["exclude_text"].items():
        lines.append(f"| {name} | {r['share_with_excluded']:.3f} | {r['share_with_asked']:.3f} |")
    return "\n".join(lines) + "\n"


def run(model: str, seed: int) -> dict:
    started = time.perf_counter()
    records = validation_records(load_settings().data_dir, seed)
    towers = Towers(model)
    vectors = towers.images(records)
    labels = [set(r.labels) for r in records]
    findings = _findings(labels)
    prompts = dict(zip(findings, towers.texts([label_prompt(f) for f in findings])))
    out = {"machine": describe(),
           "settings": {"model": model, "split": f"NIH nih800, validation by patient, seed {seed}",
                        "validation_images": len(records), "findings": findings, "rounds": ROUNDS,
                        "judged_per_round": SHOWN, "weights": WEIGHTS,
                        "rocchio": [refine.ROCCHIO_ALPHA, refine.ROCCHIO_BETA, refine.ROCCHIO_GAMMA],
                        "served_weights": {"with_text": refine.WITH_TEXT_WEIGHT,
                                           "exclude_text": refine.EXCLUDE_TEXT_WEIGHT}},
           "feedback": feedback_rounds(vectors, labels),
           "with_text": with_text(vectors, labels, prompts),
           "exclude_text": exclude_text(vectors, labels, prompts)}
    out["settings"]["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(model, out)
    print(text)
    save("refine", out, text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cxr-mini", choices=registry.list_models())
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="the validation split's seed")
    args = parser.parse_args(argv)
    run(args.model, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
