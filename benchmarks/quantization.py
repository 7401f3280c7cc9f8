"""`make bench-quantization`: a model's int8 and fp16 exports against its fp32 export, and the
onnxruntime session options of the local Triton model.

  python -m benchmarks.quantization [--model cxr-mini] [--rounds 5] [--skip-quality]

1. Export fp32, fp16 and int8 with `cxr export`'s own code; file sizes. int8 variants (one scale
   per tensor, per channel, per channel + the token-embedding table) are quantised from the fp32 file.
2. Parity in onnxruntime: cosine of each variant's embeddings with fp32's over the NIH validation
   images and IU-Xray report texts.
3. Speed in onnxruntime with the served session options: embeddings/s at batch 1 and 32 per tower;
   the variants take turns within each round, `rounds` rounds: median and min-max across rounds.
4. Session options, on the fp32 and int8 towers: graph optimisation level x intra-op threads (same
   interleaving); session load time, and from a saved optimised model.
5. Quality through Triton + gateway per precision: image->image mAP and R@10, text->image mAP and
   R@10. Noise: bootstrap of the queries (1000 resamples, the same resample for every precision):
   each mAP's 95 % interval, and the paired interval of its change from fp32.
JSON and a Markdown table go to benchmarks/results/<date>-<host>-quantization.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.machine import describe, save
from benchmarks.onnx_sessions import SERVED, embeddings_per_s, session
from benchmarks.retrieval_quality import image_rankings, text_rankings, validation_records
from benchmarks.stack import served, temporary_settings
from cxr import registry
from cxr.archives import Record
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from cxr.images import load_pixels
from cxr.manifest import ONNX_FILE, VERSION_DIR
from cxr.settings import Settings, load_settings
from export import quantization
from export.repository import export_model
from training.data import label_prompt

PRECISIONS = ("fp32", "int8", "fp16")
# int8 variants beside the exported one (cxr export --int8 = per channel, MatMul/Gemm).
INT8_VARIANTS = {
    "int8-per-tensor": replace(quantization.INT8, per_channel=False),
    "int8-reduce-range": replace(quantization.INT8, reduce_range=True),
    "int8-u8-weights": replace(quantization.INT8, unsigned_weights=True),
    "int8+embeddings": replace(quantization.INT8, ops=(*quantization.INT8.ops, "Gather")),
}
BATCHES = (1, 32)
LEVELS = ("basic", "extended", "all")
BOOTSTRAP = 1000
REPORT_TEXTS = 512
K = 10


# --- exports -------------------------------------------------------------------------------------

def export_all(model: str, base: Settings, root: Path) -> dict[str, Settings]:
    """Each precision exported by `cxr export`'s code into a repository of its own."""
    out = {}
    for precision in PRECISIONS:
        settings = temporary_settings(base, model, root / precision)
        export_model(registry.get_model(model), settings, precision=precision, log=lambda *_: None)
        out[precision] = settings
    return out


def tower_files(spec: registry.ModelSpec, exports: dict[str, Settings], root: Path) -> dict[str, dict[str, Path]]:
    """{variant: {"image": model.onnx, "text": model.onnx}}, the int8 variants made from fp32."""
    files = {p: {kind: s.model_repository / name / VERSION_DIR / ONNX_FILE
                 for kind, name in (("image", spec.image_model), ("text", spec.text_model))}
             for p, s in exports.items()}
    for variant, scheme in INT8_VARIANTS.items():
        files[variant] = {}
        for kind, source in files["fp32"].items():
            target = root / variant / f"{kind}.onnx"
            quantization.quantize_int8(source, target, scheme)
            files[variant][kind] = target
    return files


def sizes_mb(files: dict[str, dict[str, Path]]) -> dict[str, dict[str, float]]:
    return {v: {kind: round(path.stat().st_size / 1e6, 1) for kind, path in towers.items()}
            for v, towers in files.items()}


# --- inputs and parity ---------------------------------------------------------------------------

def report_texts(data_dir: Path, limit: int = REPORT_TEXTS) -> list[str]:
    """IU-Xray findings and impressions, in file order."""
    with (data_dir / "iu" / "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [row[column] for row in rows for column in ("findings", "impression") if row[column]]
    return texts[:limit]


def feeds(spec: registry.ModelSpec, settings: Settings, records: list[Record]) -> dict[str, dict[str, np.ndarray]]:
    """The towers' inputs: validation images and report texts, tokenized by the exported tokenizer."""
    tokenizer = ExportedModel.load(settings.model_repository, spec.name).tokenizer  # pads as the gateway does
    pixels = {"pixels": load_pixels([r.path for r in records], spec.image_size)}
    # Speed is timed on what the text tower serves, search queries (the label prompts, ~10 tokens);
    # parity on whole reports, up to the context length.
    prompts = [label_prompt(label) for label in sorted({label for r in records for label in r.labels})]
    queries = (prompts * (max(BATCHES) // len(prompts) + 1))[:max(BATCHES)]
    return {"parity": {"image": pixels, "text": tokenizer(report_texts(settings.data_dir))},
            "speed": {"image": pixels, "text": tokenizer(queries)}}


def embed(sess: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    count = len(next(iter(inputs.values())))
    parts = [sess.run(None, {k: v[i:i + batch] for k, v in inputs.items()})[0] for i in range(0, count, batch)]
    return np.concatenate(parts)


def cosine_summary(reference: np.ndarray, other: np.ndarray) -> dict:
    """Both L2-normalised [n, dim]: min, 1st percentile and mean of the row-wise cosines."""
    assert reference.shape == other.shape
    cos = (reference * other).sum(axis=1)
    return {"min": round(float(cos.min()), 5), "p01": round(float(np.percentile(cos, 1)), 5),
            "mean": round(float(cos.mean()), 5), "n": int(cos.size)}


def parity(files: dict[str, dict[str, Path]], inputs: dict[str, dict[str, np.ndarray]]) -> dict:
    reference = {kind: embed(session(path), inputs[kind]) for kind, path in files["fp32"].items()}
    return {variant: {kind: cosine_summary(reference[kind], embed(session(path), inputs[kind]))
                      for kind, path in towers.items()}
            for variant, towers in files.items() if variant != "fp32"}


# --- speed ---------------------------------------------------------------------------------------

def interleaved(sessions: dict[str, dict[str, ort.InferenceSession]], inputs: dict, rounds: int,
                seconds: float) -> dict:
    """Every (variant, tower, batch) timed once per round, rounds back to back: the machine's
    drift hits every variant alike. Median, min and max of embeddings/s across rounds."""
    samples: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for variant, towers in sessions.items():
            for kind, sess in towers.items():
                for batch in BATCHES:
                    samples.setdefault((variant, kind, batch), []).append(
                        embeddings_per_s(sess, inputs[kind], batch, seconds))
    out: dict = {}
    for (variant, kind, batch), values in samples.items():
        out.setdefault(variant, {}).setdefault(kind, {})[f"batch{batch}"] = {
            "per_s": round(float(np.median(values)), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "rounds": len(values)}
    return out


def speed(files: dict[str, dict[str, Path]], inputs: dict, rounds: int, seconds: float) -> dict:
    sessions = {v: {kind: session(path) for kind, path in towers.items()} for v, towers in files.items()}
    return interleaved(sessions, inputs, rounds, seconds)


def session_options(files: dict[str, dict[str, Path]], inputs: dict, rounds: int, seconds: float) -> dict:
    """Graph optimisation level x intra-op threads on fp32 and int8; load times."""
    cores = SERVED.usable_cores()
    configs = {f"{p} {level} threads={threads}": (p, level, threads)
               for p in ("fp32", "int8") for level in LEVELS for threads in sorted({1, cores})}
    sessions = {name: {kind: session(files[p][kind], graph_optimization_level=level, intra_op_threads=threads)
                       for kind in ("image", "text")} for name, (p, level, threads) in configs.items()}
    return {"cores": cores, "speed": interleaved(sessions, inputs, rounds, seconds),
            "load_s": {p: {kind: load_times(files[p][kind]) for kind in ("image", "text")} for p in ("fp32", "int8")}}


def load_times(path: Path, repeats: int = 3) -> dict:
    """Seconds to create a session per optimisation level, and from a saved optimised model (what an
    optimized_model_filepath cache would give a restarted Triton)."""
    def timed(make) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            make()
            times.append(time.perf_counter() - started)
        return round(float(np.median(times)), 3)

    out = {level: timed(lambda level=level: session(path, graph_optimization_level=level)) for level in LEVELS}
    with tempfile.TemporaryDirectory() as tmp:
        options = SERVED.session_options({}, 1)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out["cached_optimized_model"] = timed(
            lambda: session(Path(tmp) / "optimized.onnx", graph_optimization_level="disabled"))
    return out


# --- quality through the gateway -----------------------------------------------------------------

def per_query(rankings: list[np.ndarray]) -> dict[str, np.ndarray]:
    """AP and hit@K per query that has a relevant item (as cxr.ranking_metrics.summarize counts them)."""
    from cxr import ranking_metrics

    kept = [r for r in rankings if r.any()]
    return {"AP": np.array([ranking_metrics.average_precision(r) for r in kept]),
            f"R@{K}": np.array([ranking_metrics.hit_at_k(r, K) for r in kept])}


def gateway_quality(settings: Settings, records: list[Record]) -> dict[str, dict[str, np.ndarray]]:
    """Per-query AP and R@K through Triton + index + gateway, as benchmarks/retrieval_quality does."""
    labels = {r.image_id: set(r.labels) for r in records}
    names = sorted(set().union(*labels.values()))
    with served(settings, records), RetrievalClient.from_settings(settings) as client:
        return {"image_to_image": per_query(image_rankings(client, records)),
                "text_to_image": per_query(text_rankings(client, names, labels, label_prompt))}


def bootstrap(per_precision: dict[str, np.ndarray], seed: int = 0, resamples: int = BOOTSTRAP) -> dict:
    """Mean with its 95 % interval over query resamples, and the paired interval of each change
    from fp32 (one resample of the queries shared by every precision)."""
    queries = len(per_precision["fp32"])
    picks = np.random.default_rng(seed).integers(0, queries, (resamples, queries))
    means = {p: values[picks].mean(axis=1) for p, values in per_precision.items()}
    out = {}
    for p, values in per_precision.items():
        low, high = np.percentile(means[p], [2.5, 97.5])
        entry = {"value": round(float(values.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)]}
        if p != "fp32":
            delta = means[p] - means["fp32"]
            d_low, d_high = np.percentile(delta, [2.5, 97.5])
            entry["delta"] = round(float(values.mean() - per_precision["fp32"].mean()), 4)
            entry["delta_ci95"] = [round(float(d_low), 4), round(float(d_high), 4)]
            # The change is "within the noise" when it is smaller than the half-width of fp32's own
            # interval (what re-drawing the queries moves mAP by) and its paired interval holds 0.
            half_width = (np.percentile(means["fp32"], 97.5) - np.percentile(means["fp32"], 2.5)) / 2
            entry["within_noise"] = bool(abs(entry["delta"]) <= half_width and d_low <= 0 <= d_high)
        out[p] = entry
    return out


def quality(exports: dict[str, Settings], records: list[Record], log=print) -> dict:
    measured = {}
    for precision, settings in exports.items():
        log(f"quality through the gateway: {precision}")
        measured[precision] = gateway_quality(settings, records)
    return {task: {metric: bootstrap({p: measured[p][task][metric] for p in measured})
                   for metric in measured["fp32"][task]}
            for task in measured["fp32"]}


def triton_speed(exports: dict[str, Settings], rounds: int, seconds: float, log=print) -> dict:
    """fp32 and int8 through the real Triton with the registry's batching, taking turns per round:
    requests/s and p50 at concurrency 1 and 16 of one-item requests (benchmarks/tune.py's load)."""
    from benchmarks import tune

    samples: dict[str, list[dict]] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for precision in samples:
            settings = exports[precision]
            spec = registry.get_model(settings.model)
            batching = spec.batching
            setting = tune.Setting(True, batching.instance_count, batching.max_queue_delay_us,
                                   batching.preferred_batch_sizes)
            log(f"Triton load: {precision}")
            inputs = tune.payloads(settings, spec)
            samples[precision].append(tune.serve_and_measure(settings, spec, setting, inputs, tune.CONCURRENCIES,
                                                             seconds))
    return {p: {kind: {f"c{c}": {"qps": [r[kind][f"c{c}"]["qps"] for r in runs],
                                 "p50_ms": [r[kind][f"c{c}"].get("p50_ms") for r in runs]}
                       for c in tune.CONCURRENCIES} for kind in tune.KINDS}
            for p, runs in samples.items()}


# --- report --------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = [f"# Quantisation: {results['settings']['model']}", "",
             "| variant | image MB | text MB | image cos min / mean | text cos min / mean | "
             "image/s b1 | image/s b32 | text/s b1 | text/s b32 |", "|---|---|---|---|---|---|---|---|---|"]
    for variant, size in results["size_mb"].items():
        par = results["parity"].get(variant)
        cos = [f"{par[k]['min']:.4f} / {par[k]['mean']:.4f}" if par else "1 (reference)" for k in ("image", "text")]
        spd = results["speed"][variant]
        rates = [f"{spd[k][f'batch{b}']['per_s']:.0f} ({spd[k][f'batch{b}']['min']:.0f}-{spd[k][f'batch{b}']['max']:.0f})"
                 for k in ("image", "text") for b in BATCHES]
        lines.append(f"| {variant} | {size['image']} | {size['text']} | {cos[0]} | {cos[1]} | " + " | ".join(rates) + " |")
    if "quality" in results:
        lines += ["", "| task | metric | fp32 [95 % CI] | int8 Δ [paired 95 % CI] | fp16 Δ [paired 95 % CI] |",
                  "|---|---|---|---|---|"]
        for task, metrics_ in results["quality"].items():
            for metric, by_precision in metrics_.items():
                ref = by_precision["fp32"]
                cells = [f"{by_precision[p]['delta']:+.4f} [{by_precision[p]['delta_ci95'][0]:+.4f}, "
                         f"{by_precision[p]['delta_ci95'][1]:+.4f}]{'' if by_precision[p]['within_noise'] else ' *'}"
                         for p in ("int8", "fp16")]
                lines.append(f"| {task} | {metric} | {ref['value']:.4f} [{ref['ci95'][0]:.4f}, {ref['ci95'][1]:.4f}] | "
                             + " | ".join(cells) + " |")
        lines.append("\nNoise: 1000 bootstrap resamples of the queries, the same resample for every precision. "
                     "Δ is within the noise when it is smaller than half of fp32's own 95 % interval and its "
                     "paired 95 % interval holds 0; \\* marks one that is not.")
    if "triton" in results:
        lines += ["", "Through Triton (registry batching, one-item requests), requests/s per round:", "",
                  "| precision | image c1 | image c16 | text c1 | text c16 |", "|---|---|---|---|---|"]
        for precision, kinds in results["triton"].items():
            lines.append(f"| {precision} | " + " | ".join(
                ", ".join(f"{q:.0f}" for q in kinds[k][c]["qps"]) for k in ("image", "text") for c in ("c1", "c16"))
                + " |")
    options = results["session_options"]
    lines += ["", f"Session options ({options['cores']} cores), embeddings/s median (min-max):", "",
              "| config | image b1 | image b32 | text b1 | text b32 |", "|---|---|---|---|---|"]
    for name, towers in options["speed"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{towers[k][f'batch{b}']['per_s']:.0f} ({towers[k][f'batch{b}']['min']:.0f}-{towers[k][f'batch{b}']['max']:.0f})"
            for k in ("image", "text") for b in BATCHES) + " |")
    lines += ["", "Session load seconds: " + json.dumps(options["load_s"])]
    return "\n".join(lines) + "\n"


def run(model: str, rounds: int, seconds: float, with_quality: bool, seed: int = 0,
        with_triton: bool = True) -> dict:
    base = load_settings()
    spec = registry.get_model(model)
    records = validation_records(base.data_dir, seed)
    results = {"machine": describe(),
               "settings": {"model": model, "rounds": rounds, "seconds_per_sample": seconds, "batches": BATCHES,
                            "validation_images": len(records), "split": f"by patient, seed {seed}",
                            "report_texts": REPORT_TEXTS, "speed_texts": "label prompts (search queries)", "bootstrap_resamples": BOOTSTRAP,
                            "int8": asdict(quantization.INT8),
                            "int8_variants": {k: asdict(v) for k, v in INT8_VARIANTS.items()}}}
    with tempfile.TemporaryDirectory(prefix=f"bench-quantization-{model}-") as tmp:
        print(f"[{model}] exporting {', '.join(PRECISIONS)}", flush=True)
        exports = export_all(model, base, Path(tmp))
        files = tower_files(spec, exports, Path(tmp) / "variants")
        inputs = feeds(spec, exports["fp32"], records)
        results["size_mb"] = sizes_mb(files)
        print(f"[{model}] parity and speed in onnxruntime ({rounds} rounds)", flush=True)
        results["parity"] = parity(files, inputs["parity"])
        results["speed"] = speed(files, inputs["speed"], rounds, seconds)
        results["session_options"] = session_options(files, inputs["speed"], max(2, rounds // 2), seconds / 2)
        results["load_average_1_5_15"] = os.getloadavg()  # other work on the machine while it ran
        if with_quality:
            results["quality"] = quality(exports, records)
        if with_triton:
            results["triton"] = triton_speed(exports, max(2, rounds // 2), 3.0)
    text = markdown(results)
    print(text)
    save("quantization", results, text)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cxr-mini", choices=registry.list_models())
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the spread is across them)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per timing sample")
    parser.add_argument("--skip-quality", action="store_true", help="no Triton/gateway quality run")
    parser.add_argument("--skip-triton", action="store_true", help="no fp32/int8 load through Triton")
    args = parser.parse_args(argv)
    run(args.model, args.rounds, args.seconds, not args.skip_quality, with_triton=not args.skip_triton)
    return 0


if __name__ == "__main__":
    sys.exit(main())
