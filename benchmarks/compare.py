"""`make bench` / `cxr compare`: retrieval quality and speed per model, side by side with the
in-process design (PyTorch + FAISS in one Python process) and with Triton's batching off.

  python -m benchmarks.compare [--profile quick|full] [--model cxr-mini ...]

Per model, on the NIH sample's validation split (by patient, the split `cxr train` holds out):
1. Export; Triton with dynamic batching on; index the split through Triton (images/s); gateway.
2. Quality through the gateway: image->image, label prompt->image (and the bare label), each
   beside its exact random baseline (benchmarks/retrieval_quality.py).
3. Load through the gateway, text then image queries, at each concurrency: p50/p95/p99, queries/s.
   Peak RSS of Triton and of the gateway.
4. Triton stopped: the same load on the in-process baseline (threads sharing one model).
5. Triton restarted with dynamic batching off: the same gateway load.
Every figure, with the machine and versions, goes to benchmarks/results/<date>-<host>.json; the
Markdown report (tables, PNG plots, recommendations drawn from the figures) beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.load import run_load
from benchmarks.machine import describe, result_path
from benchmarks.retrieval_quality import search_all, validation_records
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import registry
from cxr.archives import Record
from cxr.client import RetrievalClient, channel_from
from cxr.manifest import read_export_manifest
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from training.data import label_prompt


@dataclass(frozen=True)
class Profile:
    concurrencies: tuple[int, ...]
    max_requests: int  # per load level
    max_seconds: float  # per load level


PROFILES = {
    "quick": Profile(concurrencies=(1, 4, 16), max_requests=48, max_seconds=15),
    "full": Profile(concurrencies=(1, 4, 16, 64), max_requests=400, max_seconds=60),
}
DEFAULT_MODELS = ("cxr-mini",)
TOP_K = 10


class _Queries:
    """Round-robin query payloads, one cursor per sender."""

    def __init__(self, records: list[Record]):
        labels = sorted({label for r in records for label in r.labels})
        reports = [r.report for r in records if r.report][:16]
        self.texts = [label_prompt(label) for label in labels] + reports + ["small left pleural effusion"]
        self.images = [r.path.read_bytes() for r in records[:32]]

    def cycle(self, kind: str):
        items = self.texts if kind == "text" else self.images
        position = iter(range(10**9))
        return lambda: items[next(position) % len(items)]


def _gateway_sender(settings: Settings, kind: str, queries: _Queries):
    def make():
        channel = channel_from(settings)
        stub, nxt = pb_grpc.RetrievalStub(channel), queries.cycle(kind)
        if kind == "text":
            return lambda: stub.SearchByText(pb.SearchByTextRequest(text=nxt(), top_k=TOP_K), timeout=120)
        return lambda: stub.SearchByImage(pb.SearchByImageRequest(image=nxt(), top_k=TOP_K), timeout=120)
    return make


def _in_process_sender(search, kind: str, queries: _Queries):
    def make():
        nxt = queries.cycle(kind)
        if kind == "text":
            return lambda: search.search_text(nxt(), TOP_K)
        return lambda: search.search_image(nxt(), TOP_K)
    return make


def _load_matrix(make_sender_for, profile: Profile) -> dict:
    """{kind: [load figures per concurrency]} for text and image queries."""
    return {kind: [run_load(make_sender_for(kind), c, profile.max_requests, profile.max_seconds)
                   for c in profile.concurrencies] for kind in ("text", "image")}


def _sizes(settings: Settings, model: str) -> dict:
    manifest = read_export_manifest(settings.model_repository, model)
    index_dir = settings.index_path(model)
    return {"onnx_mb": {name: round(entry["bytes"] / 1e6, 1) for name, entry in manifest["onnx"].items()},
            "index_mb": round(sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file()) / 1e6, 2)}


def _in_process_load(model: str, settings: Settings, queries: _Queries, profile: Profile) -> dict:
    from benchmarks.in_process import InProcessSearch

    search = InProcessSearch(registry.get_model(model), settings, settings.index_path(model))
    return _load_matrix(lambda kind: _in_process_sender(search, kind, queries), profile)


def measure(model: str, records: list[Record], base: Settings, profile: Profile, log=print) -> dict:
    queries = _Queries(records)
    with exported(base, model) as settings:
        log(f"[{model}] batching on: index, quality, gateway load")
        with served(settings, records, batching=True) as stack:
            with RetrievalClient.from_settings(settings) as client:
                quality = search_all(client, records, bare_labels=True)
            gateway = _load_matrix(lambda kind: _gateway_sender(settings, kind, queries), profile)
            # Peak = each process's high-water mark after quality and load, summed over Triton's stubs.
            memory = {"triton_rss_mb": process_tree_rss_mb(stack.triton_pid, "VmHWM"),
                      "gateway_rss_mb": process_tree_rss_mb(stack.gateway_pid, "VmHWM")}
            figures = {"index_build": stack.index_build, **_sizes(settings, model), **memory}
        log(f"[{model}] in-process baseline (PyTorch + FAISS, Triton stopped)")
        in_process = _in_process_load(model, settings, queries, profile)
        log(f"[{model}] batching off: gateway load")
        with served(settings, records, batching=False, rebuild_index=False):
            unbatched = _load_matrix(lambda kind: _gateway_sender(settings, kind, queries), profile)
    spec = registry.get_model(model)
    return {"use": spec.use, "embed_dim": spec.embed_dim, "image_size": spec.image_size,
            "quality": quality, "speed": {"gateway": gateway, "gateway_no_batching": unbatched,
                                          "in_process": in_process}, **figures}


def run(models: list[str], profile_name: str, seed: int = 0, out: Path | None = None,
        profile: Profile | None = None, archive: tuple[list[Record], str] | None = None) -> dict:
    """Measure `models` on `archive` (records, source; default: the NIH sample's validation split);
    write the JSON (`out`, default benchmarks/results/<date>-<host>.json) and the Markdown report
    beside it."""
    base = load_settings()
    profile = profile or PROFILES[profile_name]
    if archive is None:
        records, source = validation_records(base.data_dir, seed), str(base.data_dir / "nih800")
        split = f"by patient, seed {seed}"
    else:
        (records, source), split = archive, "all readable images"
    results = {"machine": describe(),
               "settings": {"profile": profile_name, **asdict(profile), "top_k": TOP_K, "models": models,
                            "archive": source, "split": split, "validation_images": len(records)},
               "models": {}}
    path = out or result_path(None if profile_name == "full" else profile_name)  # quick runs keep full ones
    for model in models:
        results["models"][model] = measure(model, records, base, profile)
        path.write_text(json.dumps(results, indent=2))  # keep what is measured if a later model fails
    markdown = report.write(results, path.with_suffix(".md"))
    print(markdown)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full",
                        help="quick: CI-sized, a few minutes; full: every concurrency, longer loads")
    parser.add_argument("--model", action="append", choices=registry.list_models(),
                        help=f"repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--seed", type=int, default=0, help="the validation split's seed")
    args = parser.parse_args(argv)
    run(args.model or list(DEFAULT_MODELS), args.profile, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
