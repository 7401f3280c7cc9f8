"""`make fuzz`: hostile requests against the real gateway (mutual TLS, tokens and the audit log on),
in front of the real Triton, with its status codes, latencies and memory recorded.

The gateway passes when no call ends UNKNOWN or INTERNAL, none runs past its deadline, health is
still SERVING at the end and its RSS grew less than 200 MB. A 14000 x 14000 PNG is then sent alone,
to time its refusal and the peak memory it costs. Results: benchmarks/results/<date>-<host>-fuzz.json.

    make fuzz                                   # 10,000 requests
    python -m benchmarks.fuzz --requests 1000   # smaller
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from benchmarks import hostile
from benchmarks.machine import describe, exit_status, save
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import archives
from cxr.client import channel_from
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.settings import Settings, load_settings
from gateway import process as gateway_process
from gateway.dev_pki import dev_security, issue_token

SERVICE = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name
DEADLINE_S = 20.0
FAILED = {"UNKNOWN", "INTERNAL"}
RSS_LIMIT_MB = 200
BIG_PNG_SIDE = 14_000


@dataclass(frozen=True)
class Request:
    kind: str  # what is hostile about it
    method: str
    payload: bytes  # the serialized request, or garbage
    metadata: tuple = ()


class HostileRequests:
    """Draws hostile requests (and a few valid ones) from a seed, the real samples and a dev PKI."""

    def __init__(self, settings: Settings, samples: Path, seed: int):
        self.rng = random.Random(seed)
        self.images = hostile.HostileImages(samples, seed)
        self.valid_image = (samples / "00000001_000.png").read_bytes()
        pki = Path(settings.ca).parent
        scopeless = issue_token(pki / "signing.key", "fuzz", ["admin"], 3600, settings.jwt_issuer,
                                settings.jwt_audience)
        self.token = settings.token
        self.tokens = {"no scope": scopeless, "garbage": "x" * self.rng.choice([1, 100, 8000]),
                       "api-key shaped": "cxr_deadbeef_" + "A" * 43, "not bearer": None}
        self.kinds = [name for name in dir(self) if name.startswith("k_")]

    def draw(self) -> Request:
        return getattr(self, self.rng.choice(self.kinds))()

    def _auth(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),)

    def _text(self, kind: str, **fields) -> Request:
        request = pb.SearchByTextRequest(**{"text": "pleural effusion", "top_k": 5, **fields})
        return Request(kind, "SearchByText", request.SerializeToString(), self._auth())

    def k_image(self) -> Request:
        kind, data = self.images.draw()
        request = pb.SearchByImageRequest(image=data, top_k=self.rng.choice([0, 1, 10]))
        return Request(f"image:{kind}", "SearchByImage", request.SerializeToString(), self._auth())

    def k_valid(self) -> Request:
        request = pb.SearchByImageRequest(image=self.valid_image, top_k=5)
        return Request("valid image", "SearchByImage", request.SerializeToString(), self._auth())

    def k_text(self) -> Request:
        return self._text("text", text=hostile.hostile_texts(self.rng))

    def k_top_k(self) -> Request:
        return self._text("top_k", top_k=self.rng.choice([-(2**31), -1, 1001, 2**31 - 1, 10**6]))

    def k_model(self) -> Request:
        name = self.rng.choice(["gpt-4", "../../etc/passwd", "\0", "x" * 5000, "medsiglip", "cxr-mini\n"])
        return self._text("model", model=name)

    def k_filters(self) -> Request:
        values = self.rng.choice([["Broken bone"], ["x" * 10_000], [str(i) for i in range(2000)], ["\0"], [""]])
        field = self.rng.choice(["labels", "projections"])
        return self._text("filters", filters=pb.Filters(**{field: values}))

    def k_study(self) -> Request:
        uid = self.rng.choice(["", "nope", "\0" * 10, "x" * 100_000, "00000001_000", "' OR 1=1 --"])
        request = pb.GetStudyRequest(study_uid=uid, model=self.rng.choice(["", "nope"]))
        return Request("study", "GetStudy", request.SerializeToString(), self._auth())

    def k_batch(self) -> Request:
        size = self.rng.choice([0, 1, 3, 257])
        queries = [pb.SearchQuery(text=pb.SearchByTextRequest(text=hostile.hostile_texts(self.rng), top_k=3))
                   if self.rng.random() < 0.5 else
                   pb.SearchQuery(image=pb.SearchByImageRequest(image=self.images.draw()[1], top_k=3))
                   for _ in range(min(size, 4))]
        queries += [pb.SearchQuery(text=pb.SearchByTextRequest(text="mass", top_k=1))] * max(0, size - 4)
        request = pb.BatchSearchRequest(queries=queries)
        return Request(f"batch of {size}", "BatchSearch", request.SerializeToString(), self._auth())

    def k_garbage_message(self) -> Request:
        method = self.rng.choice(["SearchByText", "SearchByImage", "BatchSearch", "GetStudy"])
        return Request("garbage message", method, self.rng.randbytes(self.rng.choice([1, 9, 300, 5000])), self._auth())

    def k_credentials(self) -> Request:
        name = self.rng.choice(list(self.tokens))
        token = self.tokens[name]
        metadata = (("authorization", "Basic Zm9vOmJhcg=="),) if token is None else (("authorization",
                                                                                       f"Bearer {token}"),)
        request = pb.SearchByTextRequest(text="effusion", top_k=3)
        return Request(f"credentials: {name}", "SearchByText", request.SerializeToString(), metadata)

    def k_list_models(self) -> Request:
        return Request("list models", "ListModels", b"", self._auth())


def _rpc(channel, method: str):
    return channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def fire(settings: Settings, requests: list[Request], concurrency: int = 8) -> list[tuple[str, str, float]]:
    """(kind, status code, seconds) of each request, sent by `concurrency` threads with a channel each."""
    outcomes, lock = [], threading.Lock()
    queue = iter(requests)

    def worker():
        with channel_from(settings) as ch:
            while True:
                with lock:
                    request = next(queue, None)
                if request is None:
                    return
                started = time.monotonic()
                try:
                    _rpc(ch, request.method)(request.payload, metadata=request.metadata, timeout=DEADLINE_S)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    outcomes.append((request.kind, code, time.monotonic() - started))

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return outcomes


def summarize(outcomes: list[tuple[str, str, float]]) -> dict:
    codes = Counter(code for _, code, _ in outcomes)
    by_kind: dict[str, Counter] = {}
    for kind, code, _ in outcomes:
        by_kind.setdefault(kind, Counter())[code] += 1
    slowest = max((seconds for *_, seconds in outcomes), default=0.0)
    return {"requests": len(outcomes), "codes": dict(codes), "failed": sum(codes[c] for c in FAILED),
            "hangs": sum(seconds >= DEADLINE_S for *_, seconds in outcomes), "slowest_s": round(slowest, 3),
            "by_kind": {kind: dict(counter) for kind, counter in sorted(by_kind.items())}}


def big_png(settings: Settings, gateway_pid: int, repeats: int = 20) -> dict:
    """A 14000 x 14000 black PNG (~190 KB), sent alone: time to refusal, and the gateway's peak RSS."""
    data = hostile.png(BIG_PNG_SIDE, BIG_PNG_SIDE)
    request = pb.SearchByImageRequest(image=data, top_k=5).SerializeToString()
    peak_before = process_tree_rss_mb(gateway_pid, "VmHWM")
    seconds, codes = [], Counter()
    with channel_from(settings) as ch:
        call = _rpc(ch, "SearchByImage")
        metadata = (("authorization", f"Bearer {settings.token}"),)
        for _ in range(repeats):
            started = time.perf_counter()
            try:
                call(request, metadata=metadata, timeout=DEADLINE_S)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
            seconds.append(time.perf_counter() - started)
    ordered = sorted(seconds)
    return {"bytes": len(data), "repeats": repeats, "codes": dict(codes),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2),
            "peak_rss_growth_mb": round(process_tree_rss_mb(gateway_pid, "VmHWM") - peak_before, 1)}


def verdict(figures: dict) -> list[str]:
    """What failed, in words; empty when the gateway passed."""
    run, png = figures["hostile"], figures["big_png"]
    problems = [f"{run['failed']} calls ended UNKNOWN/INTERNAL"] if run["failed"] else []
    problems += [f"{run['hangs']} calls ran past the {DEADLINE_S:.0f} s deadline"] if run["hangs"] else []
    problems += ["health was not SERVING afterwards"] if not figures["serving_after"] else []
    growth = figures["rss_mb"]["after"] - figures["rss_mb"]["before"]
    problems += [f"gateway RSS grew {growth:.0f} MB (limit {RSS_LIMIT_MB})"] if growth >= RSS_LIMIT_MB else []
    problems += [f"the {BIG_PNG_SIDE}² PNG got {png['codes']}"] if set(png["codes"]) != {"INVALID_ARGUMENT"} else []
    return problems


def run(requests: int, seed: int, concurrency: int, model: str = "cxr-mini") -> dict:
    base = load_settings()
    records = archives.nih_labels(base.data_dir / "nih800" / "labels.csv", base.data_dir / "nih800")[:200]
    with exported(base, model) as plain:
        settings = dev_security(plain, plain.run_dir / "pki", "fuzz", ["search", "studies", "admin"],
                                audit_log=plain.run_dir / "audit.log")
        with served(settings, records) as stack:
            made = HostileRequests(settings, base.data_dir / "cxr_samples", seed)
            batch = [made.draw() for _ in range(requests)]
            rss_before = process_tree_rss_mb(stack.gateway_pid)
            started = time.monotonic()
            outcomes = fire(settings, batch, concurrency)
            seconds = time.monotonic() - started
            rss_after = process_tree_rss_mb(stack.gateway_pid)
            serving = gateway_process.health(settings) == health_pb2.HealthCheckResponse.SERVING
            png = big_png(settings, stack.gateway_pid)
            audit_lines = len(settings.audit_log.read_text().splitlines())
    figures = {"hostile": dict(summarize(outcomes), seconds=round(seconds, 1)),
               "rss_mb": {"before": rss_before, "after": rss_after}, "serving_after": serving, "big_png": png,
               "audit_lines": audit_lines}
    return {"machine": describe(), "settings": {"model": model, "requests": requests, "seed": seed,
                                                "concurrency": concurrency, "deadline_s": DEADLINE_S,
                                                "security": "mutual TLS, JWT auth, audit log"},
            "figures": figures, "problems": verdict(figures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="cxr-mini")
    args = parser.parse_args(argv)
    results = run(args.requests, args.seed, args.concurrency, args.model)
    figures = results["figures"]
    print(json.dumps({k: v for k, v in figures["hostile"].items() if k != "by_kind"}, indent=2))
    print(f"RSS {figures['rss_mb']}; big PNG {figures['big_png']}")
    save("fuzz", results)
    return exit_status(results["problems"])


if __name__ == "__main__":
    sys.exit(main())
