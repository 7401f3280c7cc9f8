"""`make tune MODEL=…`: Triton batching settings for a model's towers, chosen by measurement.

  python -m benchmarks.tune [--model cxr-mini] [--write] [--seconds 3]

Through the real local Triton (python backend + onnxruntime, as `cxr serve` runs it), each setting
is one Triton start serving both towers, loaded with one-item requests (what the gateway sends per
query) at concurrency 1 and 16:
- dynamic batching off, instance_count 1 and 2 (the baseline);
- dynamic batching on: instance_count x max_queue_delay_us x preferred batch sizes.
Triton's statistics give the per-call breakdown of each load: mean batch, queue and compute time.
Choice, per tower: the most requests/s at concurrency 16 among the batching-on settings whose
concurrency-1 p50 stays within LATENCY_SLACK of the best one; near-ties (within QPS_TIE) go to fewer
instances, then the shorter delay. The chosen setting and the best baseline are measured again,
alternately, to show their spread. Default: print the table; --write stores the choice in
cxr/model_configs/<model>.json "batching".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks.load import run_load
from benchmarks.machine import describe, result_path
from benchmarks.stack import temporary_settings
from cxr import registry
from cxr.catalog import ExportedModel
from cxr.images import load_pixels
from cxr.manifest import ONNX_FILE, VERSION_DIR, read_export_manifest
from cxr.processes import stop_process
from cxr.registry import Batching
from cxr.settings import Settings, load_settings
from cxr.towers import towers
from cxr.triton import server_process
from cxr.triton.request import admin_headers, connection, connections
from cxr.triton.sync_client import TowerClient
from export import triton_config

KINDS = ("image", "text")
INSTANCES = (1, 2)
DELAYS_US = (0, 500, 2000, 5000)
PREFERRED = ((), (16,))
CONCURRENCIES = (1, 16)
LATENCY_SLACK = (1.0, 0.25)  # a concurrency-1 p50 may exceed the best by 1 ms or 25 %, whichever is more
QPS_TIE = 0.05
MAX_REQUESTS = 2000  # per load; the seconds bound usually ends it first
QUERY = "small left pleural effusion"


@dataclass(frozen=True)
class Setting:
    batching: bool
    instance_count: int
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if not self.batching:
            return f"off i={self.instance_count}"
        preferred = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        return f"on i={self.instance_count} d={self.max_queue_delay_us} p={preferred}"


def sweep(instances=INSTANCES, delays=DELAYS_US, preferred=PREFERRED) -> list[Setting]:
    return [Setting(False, n) for n in instances] + [
        Setting(True, n, d, tuple(p)) for n in instances for d in delays for p in preferred]


def check_sweep(spec: registry.ModelSpec, instances, delays, preferred, concurrencies) -> None:
    """Refuse settings Triton would reject, or that the choice cannot compare."""
    if not instances or min(instances) < 1:
        raise ValueError(f"instance counts {list(instances)}: each must be at least 1")
    if not delays or min(delays) < 0:
        raise ValueError(f"queue delays {list(delays)}: each must be 0 or more microseconds")
    too_big = [p for p in preferred if p and (min(p) < 1 or max(p) > spec.batching.max_batch_size)]
    if too_big:
        raise ValueError(f"preferred batch sizes {too_big} must lie in 1..max_batch_size "
                         f"({spec.batching.max_batch_size} for {spec.name})")
    if sorted(set(concurrencies)) != sorted(concurrencies) or len(concurrencies) != 2 or min(concurrencies) < 1:
        raise ValueError(f"concurrencies {list(concurrencies)}: give two distinct levels, low then high")


# --- one Triton per setting ----------------------------------------------------------------------

def write_configs(settings: Settings, spec: registry.ModelSpec, setting: Setting) -> None:
    """Both towers' config.pbtxt with `setting`, the rest from the registry."""
    batching = Batching(spec.batching.max_batch_size, setting.max_queue_delay_us, setting.instance_count,
                        setting.preferred_batch_sizes)
    pad_id = read_export_manifest(settings.model_repository, spec.name)["tokenizer"].get("pad_id")
    for tower in towers(spec):
        config = triton_config.model_config(tower, batching, "local", pad_id=pad_id)
        if not setting.batching:
            config.ClearField("dynamic_batching")
        (settings.model_repository / tower.triton_name / "config.pbtxt").write_text(triton_config.to_pbtxt(config))


def payloads(settings: Settings, spec: registry.ModelSpec) -> dict:
    """One real X-ray and one short query text, as single-item requests."""
    tokenizer = ExportedModel.load(settings.model_repository, spec.name).tokenizer  # pads as the gateway does
    image = sorted((settings.data_dir / "nih800" / "valid").rglob("*.png"))[0]
    return {"image": load_pixels([image], spec.image_size), "text": tokenizer([QUERY])}


def _statistics(client, model: str, headers: dict) -> dict:
    """Triton's cumulative counters for `model` (JSON omits zeros)."""
    stats = client.get_inference_statistics(model, headers=headers, as_json=True)["model_stats"][0]
    inference = stats.get("inference_stats", {})
    ns = lambda key: int(inference.get(key, {}).get("ns", 0))  # noqa: E731
    batches = stats.get("batch_stats", [])
    return {"requests": int(inference.get("success", {}).get("count", 0)), "queue_ns": ns("queue"),
            "input_output_ns": ns("compute_input") + ns("compute_output"),
            "executions": int(stats.get("execution_count", 0)), "inferences": int(stats.get("inference_count", 0)),
            "execution_infer_ns": sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in batches)}


def breakdown(before: dict, after: dict) -> dict:
    """Per request: queue and tensor copy ms; per onnxruntime call: compute ms and mean batch."""
    d = {key: after[key] - before[key] for key in before}
    requests, executions = max(d["requests"], 1), max(d["executions"], 1)
    return {"mean_batch": round(d["inferences"] / executions, 2),
            "queue_ms": round(d["queue_ns"] / requests / 1e6, 3),
            "copy_ms": round(d["input_output_ns"] / requests / 1e6, 3),
            "compute_ms_per_call": round(d["execution_infer_ns"] / executions / 1e6, 3)}


def load_tower(settings: Settings, spec: registry.ModelSpec, kind: str, payload, concurrency: int,
               seconds: float) -> dict:
    """Closed-loop load of one tower, each thread with its own gRPC client, and Triton's breakdown."""
    image, text = towers(spec)
    clients = []

    def make_sender():
        client = TowerClient(connections(settings), image, text, spec.batching.max_batch_size)
        clients.append(client)
        return (lambda: client.embed_images(payload)) if kind == "image" else (lambda: client.embed_texts(payload))

    model = image.triton_name if kind == "image" else text.triton_name
    headers = admin_headers(settings.triton_admin_key_file)
    stats_client = grpcclient.InferenceServerClient(**connection(settings))
    try:
        before = _statistics(stats_client, model, headers)
        figures = run_load(make_sender, concurrency, MAX_REQUESTS, seconds)
        figures["triton"] = breakdown(before, _statistics(stats_client, model, headers))
    finally:
        for client in [stats_client, *clients]:
            client.close()
    return figures


def serve_and_measure(settings: Settings, spec: registry.ModelSpec, setting: Setting, inputs: dict,
                      concurrencies, seconds: float) -> dict:
    write_configs(settings, spec, setting)
    process, log_file = server_process.start(settings)
    try:
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], process, 300, log_file)
        return {kind: {f"c{c}": load_tower(settings, spec, kind, inputs[kind], c, seconds) for c in concurrencies}
                for kind in KINDS}
    finally:
        stop_process(process)


def onnxruntime_calls(settings: Settings, spec: registry.ModelSpec, inputs: dict, seconds: float) -> dict:
    """ms per onnxruntime call at batch 1 and 16 outside Triton, with the served session options: the
    floor under Triton's compute time, and what batching can save per item."""
    from benchmarks.onnx_sessions import embeddings_per_s, session

    out = {}
    for kind, tower in zip(KINDS, towers(spec)):
        sess = session(settings.model_repository / tower.triton_name / VERSION_DIR / ONNX_FILE)
        out[kind] = {}
        for batch in (1, 16):
            tiled = {name: np.repeat(array, batch, axis=0) for name, array in inputs[kind].items()} \
                if kind == "text" else {tower.inputs[0].name: np.repeat(inputs[kind], batch, axis=0)}
            out[kind][f"batch{batch}_ms"] = round(1000 * batch / embeddings_per_s(sess, tiled, batch, seconds), 3)
    return out


# --- the choice ----------------------------------------------------------------------------------

def choose(rows: list[tuple[Setting, dict]], kind: str, low: int, high: int) -> Setting:
    """The batching-on setting with the most requests/s at `high` among those whose p50 at `low`
    is near the best; near-ties go to fewer instances, then the shorter delay."""
    on = [(s, f[kind]) for s, f in rows if s.batching]
    best_p50 = min(f[f"c{low}"]["p50_ms"] for _, f in on)
    allowed = best_p50 + max(LATENCY_SLACK[0], best_p50 * LATENCY_SLACK[1])
    fast = [(s, f) for s, f in on if f[f"c{low}"]["p50_ms"] <= allowed]
    top = max(f[f"c{high}"]["qps"] for _, f in fast)
    near = [s for s, f in fast if f[f"c{high}"]["qps"] >= top * (1 - QPS_TIE)]
    return min(near, key=lambda s: (s.instance_count, s.max_queue_delay_us, len(s.preferred_batch_sizes)))


def best_baseline(rows: list[tuple[Setting, dict]], kind: str, high: int) -> Setting:
    return max((s for s, _ in rows if not s.batching), key=lambda s: dict(rows)[s][kind][f"c{high}"]["qps"])


def table(rows: list[tuple[Setting, dict]], low: int, high: int) -> str:
    header = ["setting"] + [f"{k} {col}" for k in KINDS for col in
                            (f"c{low} p50 ms", f"c{high} q/s", f"c{high} p50 ms", "batch", "queue ms", "call ms")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, figures in rows:
        cells = [setting.label]
        for kind in KINDS:
            lo, hi = figures[kind][f"c{low}"], figures[kind][f"c{high}"]
            t = hi["triton"]
            cells += [f"{lo.get('p50_ms', float('nan')):.2f}", f"{hi['qps']:.0f}", f"{hi.get('p50_ms', float('nan')):.1f}",
                      f"{t['mean_batch']:.1f}", f"{t['queue_ms']:.2f}", f"{t['compute_ms_per_call']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict, rows: list[tuple[Setting, dict]], low: int, high: int) -> str:
    """The Markdown report: the sweep's table, the choice, its re-measurement and onnxruntime alone."""
    lines = [f"# make tune: {results['settings']['model']} ({results['settings']['precision']})", "",
             table(rows, low, high), "",
             "batch: mean requests per onnxruntime call; queue ms: per request; call ms: per onnxruntime call "
             "(Triton's statistics over the concurrency-16 load).", "",
             "Chosen: " + "; ".join(f"{k}: {v['max_queue_delay_us']} us delay, {v['instance_count']} instance(s)"
                                    for k, v in results["chosen"].items()), ""]
    for kind, figures in results["confirm"].items():
        lines.append(f"- {kind}: {figures['chosen']} vs {figures['baseline']} at c{high}, measured again in turns: "
                     f"{figures['chosen_qps']} vs {figures['baseline_qps']} req/s, x{figures['speedup_median']} "
                     f"(range {figures['speedup_range'][0]}-{figures['speedup_range'][1]})")
    lines += ["", f"onnxruntime alone, ms per call: {json.dumps(results['onnxruntime_ms_per_call'])}"]
    return "\n".join(lines) + "\n"


def confirm(settings, spec, chosen: dict[str, Setting], baselines: dict[str, Setting], inputs, concurrencies,
            seconds: float, rounds: int) -> dict:
    """The chosen settings and the baselines again, alternately: requests/s at high concurrency per round."""
    high = concurrencies[-1]
    runs = {s for s in [*chosen.values(), *baselines.values()]}
    samples: dict[Setting, list[dict]] = {s: [] for s in runs}
    for _ in range(rounds):
        for setting in sorted(runs, key=lambda s: s.label):
            samples[setting].append(serve_and_measure(settings, spec, setting, inputs, concurrencies, seconds))
    out = {}
    for kind in KINDS:
        on = [f[kind][f"c{high}"]["qps"] for f in samples[chosen[kind]]]
        off = [f[kind][f"c{high}"]["qps"] for f in samples[baselines[kind]]]
        out[kind] = {"chosen": chosen[kind].label, "baseline": baselines[kind].label,
                     "chosen_qps": on, "baseline_qps": off,
                     "speedup_median": round(float(np.median(on) / np.median(off)), 2),
                     "speedup_range": [round(min(on) / max(off), 2), round(max(on) / min(off), 2)]}
    return out


# --- the registry --------------------------------------------------------------------------------

def batching_entry(current: dict, chosen: dict[str, Setting]) -> dict:
    """The registry's "batching" object with the chosen settings; a tower whose choice differs
    from the image tower's gets its own overrides under its name."""
    def fields(s: Setting) -> dict:
        out = {"max_queue_delay_us": s.max_queue_delay_us, "instance_count": s.instance_count}
        if s.preferred_batch_sizes:
            out["preferred_batch_sizes"] = list(s.preferred_batch_sizes)
        return out

    entry = {k: v for k, v in current.items() if k not in (*KINDS, "preferred_batch_sizes")}
    entry.update(fields(chosen["image"]))
    if fields(chosen["text"]) != fields(chosen["image"]):
        entry["text"] = fields(chosen["text"])
    return entry


def write_batching(model: str, chosen: dict[str, Setting], config_dir: Path = registry.CONFIG_DIR) -> Path:
    path = config_dir / f"{model}.json"
    raw = json.loads(path.read_text())
    raw["batching"] = batching_entry(raw["batching"], chosen)
    path.write_text(registry_json(raw))
    return path


def registry_json(raw: dict) -> str:
    """Indented JSON with lists of numbers kept on one line, as the registry files are written."""
    text = json.dumps(raw, indent=2)
    return re.sub(r"\[\s+([-0-9., \n]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text) + "\n"


# --- the run -------------------------------------------------------------------------------------

def run(model: str, settings_sweep: list[Setting], concurrencies=CONCURRENCIES, seconds: float = 3.0,
        confirm_rounds: int = 2, write: bool = False, config_dir: Path = registry.CONFIG_DIR, log=None,
        precision: str | None = None, save: bool = True, base: Settings | None = None) -> dict:
    from export.repository import export_model

    log = log or (lambda *parts: print(*parts, flush=True))
    spec = registry.get_model(model)
    low, high = concurrencies
    base = base or load_settings()
    with tempfile.TemporaryDirectory(prefix=f"tune-{model}-") as tmp:
        settings = temporary_settings(base, model, Path(tmp))
        manifest = export_model(spec, settings, precision=precision, log=lambda *_: None)
        inputs = payloads(settings, spec)
        calls = onnxruntime_calls(settings, spec, inputs, seconds)
        log(f"onnxruntime alone, ms per call: {calls}")
        rows = []
        started = time.perf_counter()
        for setting in settings_sweep:
            rows.append((setting, serve_and_measure(settings, spec, setting, inputs, concurrencies, seconds)))
            log(f"  {setting.label}: " + ", ".join(
                f"{k} {rows[-1][1][k][f'c{high}']['qps']:.0f} q/s" for k in KINDS))
        chosen = {kind: choose(rows, kind, low, high) for kind in KINDS}
        baselines = {kind: best_baseline(rows, kind, high) for kind in KINDS}
        repeat = confirm(settings, spec, chosen, baselines, inputs, concurrencies, seconds, confirm_rounds) \
            if confirm_rounds else {}
    results = {"machine": describe(),
               "settings": {"model": model, "precision": manifest["precision"], "concurrencies": list(concurrencies),
                            "seconds_per_load": seconds, "latency_slack": LATENCY_SLACK, "qps_tie": QPS_TIE,
                            "sweep_seconds": round(time.perf_counter() - started, 1)},
               "onnxruntime_ms_per_call": calls,
               "rows": [{"setting": asdict(s), "label": s.label, **f} for s, f in rows],
               "chosen": {k: asdict(s) for k, s in chosen.items()}, "confirm": repeat}
    log(table(rows, low, high))
    log("\nchosen: " + "; ".join(f"{k}: {s.label}" for k, s in chosen.items()))
    for kind, figures in repeat.items():
        log(f"{kind}: {figures['chosen']} vs {figures['baseline']} at c{high}: x{figures['speedup_median']} "
            f"(range {figures['speedup_range'][0]}-{figures['speedup_range'][1]} over {confirm_rounds} rounds)")
    if save:
        path = result_path(f"tune-{model}")
        path.write_text(json.dumps(results, indent=2))
        path.with_suffix(".md").write_text(summary(results, rows, low, high))
        log(f"wrote {path}")
    if write:
        log(f"wrote {write_batching(model, chosen, config_dir)}")
    else:
        log("(not written: pass --write to store the choice in the registry)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cxr-mini", choices=registry.list_models())
    parser.add_argument("--instances", type=int, nargs="+", default=list(INSTANCES))
    parser.add_argument("--delays", type=int, nargs="+", default=list(DELAYS_US), help="max_queue_delay_us values")
    parser.add_argument("--preferred", nargs="+", default=["-", "16"],
                        help="preferred batch size lists, comma-separated; '-' for none")
    parser.add_argument("--concurrencies", type=int, nargs=2, default=list(CONCURRENCIES), metavar=("LOW", "HIGH"))
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per load")
    parser.add_argument("--confirm-rounds", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="export precision (default: registry's)")
    parser.add_argument("--write", action="store_true", help="store the choice in cxr/model_configs/<model>.json")
    args = parser.parse_args(argv)
    try:
        preferred = [tuple(int(x) for x in p.split(",")) if p != "-" else () for p in args.preferred]
        check_sweep(registry.get_model(args.model), args.instances, args.delays, preferred, args.concurrencies)
    except ValueError as exc:
        parser.error(str(exc))
    run(args.model, sweep(args.instances, args.delays, preferred), tuple(args.concurrencies), args.seconds,
        args.confirm_rounds, args.write, precision=args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
