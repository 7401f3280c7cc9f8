"""`make fuzz`: hostile requests against the real gateway (mutual TLS, tokens and the audit log on),
in front of the real Triton, with its status codes, latencies and memory recorded, over gRPC and then
over HTTP (benchmarks.hostile_http: bodies, JSON, multipart, headers, tokens, paths, malformed HTTP)
while slow clients (slowloris) hold connections and a bystander searches every 100 ms.

The gateway passes when no gRPC call ends UNKNOWN or INTERNAL and no HTTP request gets a 5xx, none runs
past its deadline, no slow client outlives the header or body deadline by more than a second, health is
still SERVING at the end, its RSS grew less than RSS_LIMIT_MB over the gRPC run and peaked less than
HTTP_PEAK_LIMIT_MB above its start during the HTTP run. A 14000 x 14000 PNG is then sent alone, to time
its refusal and the peak memory it costs. Results: benchmarks/results/<date>-<host>-fuzz.json.

    make fuzz                                                  # 10,000 gRPC and 10,000 HTTP requests
    python -m benchmarks.fuzz --requests 1000 --http-requests 1000   # smaller
"""

from __future__ import annotations

import argparse
import json
import random
import re
import ssl
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from benchmarks import hostile, hostile_http
from benchmarks.machine import describe, exit_status, save
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import archives, gateway_process
from cxr.client import channel_from
from cxr.dev_pki import dev_security, issue_token
from cxr.processes import free_ports
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.settings import Settings, load_settings

SERVICE = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name
DEADLINE_S = 20.0
FAILED = {"UNKNOWN", "INTERNAL"}
RSS_LIMIT_MB = 200
# The HTTP run's peak above the gateway's RSS before it: every upload slot (max_concurrent_uploads, 8) full
# of the largest body the mix sends (a ~5 MB batch of base64 images, ~4 copies on its way: body, JSON,
# message, gRPC frame) plus 4 decodes at once of the largest image the limits let through (~50 MP).
HTTP_PEAK_LIMIT_MB = 1024
SLOW_CLIENTS = 20
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a gateway log record's first line
# A request that declares a body it never sends waits for the body deadline: 5 s here, so that it ends
# well within DEADLINE_S (the default, 60 s, is for slow links).
HTTP_TIMEOUTS = {"http_header_timeout_s": 5.0, "http_body_timeout_s": 5.0}
BYSTANDER_PERIOD_S = 0.1
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


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1) if ordered else 0.0


def fire_http(target: hostile_http.Target, requests: list[hostile_http.HttpRequest],
              concurrency: int = 8) -> list[tuple[str, int, float]]:
    """(kind, HTTP status (0: closed without an answer), seconds) of each request, `concurrency` at a time."""
    with ThreadPoolExecutor(concurrency) as pool:
        answers = pool.map(lambda r: (r.kind, *hostile_http.send(target, r.data, DEADLINE_S)), requests)
        return list(answers)


def summarize_http(outcomes: list[tuple[str, int, float]]) -> dict:
    codes = Counter(str(status) for _, status, _ in outcomes)
    by_kind: dict[str, Counter] = {}
    for kind, status, _ in outcomes:
        by_kind.setdefault(kind, Counter())[str(status)] += 1
    return {"requests": len(outcomes), "codes": dict(sorted(codes.items())),
            "failed": sum(n for code, n in codes.items() if int(code) >= 500),
            "closed_without_answer": codes.get("0", 0),
            "hangs": sum(seconds >= DEADLINE_S for *_, seconds in outcomes),
            "slowest_s": round(max((s for *_, s in outcomes), default=0.0), 3),
            "by_kind": {kind: dict(counter) for kind, counter in sorted(by_kind.items())}}


class Background:
    """While the HTTP run lasts: slow clients holding connections, a bystander searching, RSS sampled."""

    def __init__(self, settings: Settings, target: hostile_http.Target, gateway_pid: int):
        self.settings, self.target, self.pid = settings, target, gateway_pid
        self.stop = threading.Event()
        self.lifetimes: list[float] = []
        self.latencies: list[float] = []
        self.peak_mb = 0.0
        self.threads = [threading.Thread(target=self._slow, args=(i,), daemon=True) for i in range(SLOW_CLIENTS)]
        self.threads += [threading.Thread(target=self._bystander, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]

    def __enter__(self) -> Background:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE_S + 60)

    def _slow(self, i: int) -> None:
        limit_s = self.settings.http_body_timeout_s + 30
        while not self.stop.is_set():
            kind = hostile_http.SLOW_KINDS[i % len(hostile_http.SLOW_KINDS)]
            self.lifetimes.append(hostile_http.slow_client(self.target, kind, 0.5, limit_s))

    def _bystander(self) -> None:
        while not self.stop.wait(BYSTANDER_PERIOD_S):
            self.latencies.append(bystander_search(self.target))

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, process_tree_rss_mb(self.pid))


def bystander_search(target: hostile_http.Target) -> float:
    """Seconds for one valid text search (a new TLS connection, as a browser's first call)."""
    data = hostile_http.request("POST", "/v1/search/text", {"Content-Type": "application/json",
                                                            "Authorization": f"Bearer {target.token}"},
                                b'{"text": "small left pleural effusion", "topK": 5}', target.host)
    status, seconds = hostile_http.send(target, data, DEADLINE_S)
    return seconds if status == 200 else DEADLINE_S


def http_run(settings: Settings, gateway_pid: int, requests: int, seed: int, concurrency: int) -> dict:
    """The HTTP half: the bystander's latency at rest, then the hostile mix with slow clients beside it."""
    context = ssl.create_default_context(cafile=settings.ca)
    context.load_cert_chain(settings.client_cert, settings.client_key)
    target = hostile_http.Target(settings.http_port, context, settings.token)
    made = hostile_http.HostileHttpRequests(target, settings.data_dir / "cxr_samples", Path(settings.ca).parent,
                                            settings.jwt_issuer, settings.jwt_audience, seed)
    batch = [made.draw() for _ in range(requests)]
    at_rest = [bystander_search(target) for _ in range(50)]
    rss_before = process_tree_rss_mb(gateway_pid)
    started = time.monotonic()
    with Background(settings, target, gateway_pid) as background:
        outcomes = fire_http(target, batch, concurrency)
    seconds = time.monotonic() - started
    return dict(summarize_http(outcomes), seconds=round(seconds, 1),
                rss_mb={"before": rss_before, "peak": background.peak_mb,
                        "peak_growth": round(background.peak_mb - rss_before, 1)},
                bystander_ms={"at_rest_p50": _percentile(at_rest, 0.5), "at_rest_p99": _percentile(at_rest, 0.99),
                              "during_p50": _percentile(background.latencies, 0.5),
                              "during_p99": _percentile(background.latencies, 0.99),
                              "during_queries": len(background.latencies)},
                slow_clients={"connections": len(background.lifetimes),
                              "longest_s": round(max(background.lifetimes, default=0.0), 1)})


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
    return problems + http_verdict(figures["http"], figures["slow_limit_s"]) if "http" in figures else problems


def gateway_errors(log_file: Path, limit: int = 40) -> list[str]:
    """The gateway log's ERROR records with their stack frames (the log holds types and frames, never a
    query), so that a failure found here can be traced after the run's folder is gone."""
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    records, current = [], None
    for line in lines:
        if RECORD_START.match(line):
            current = [line] if " ERROR " in line else None
            if current is not None:
                records.append(current)
        elif current is not None:
            current.append(line)
    return ["\n".join(record) for record in records[-limit:]]


def http_verdict(http: dict, slow_limit_s: float) -> list[str]:
    problems = [f"{http['failed']} HTTP requests got a 5xx"] if http["failed"] else []
    problems += [f"{http['hangs']} HTTP requests ran past the {DEADLINE_S:.0f} s deadline"] if http["hangs"] else []
    growth = http["rss_mb"]["peak_growth"]
    problems += [f"gateway RSS peaked {growth:.0f} MB above its start (limit {HTTP_PEAK_LIMIT_MB})"] \
        if growth >= HTTP_PEAK_LIMIT_MB else []
    longest = http["slow_clients"]["longest_s"]
    problems += [f"a slow client held its connection {longest:.0f} s (limit {slow_limit_s:.0f})"] \
        if longest > slow_limit_s else []
    return problems


def run(requests: int, seed: int, concurrency: int, model: str = "cxr-mini", http_requests: int = 0) -> dict:
    base = load_settings()
    records = archives.nih_labels(base.data_dir / "nih800" / "labels.csv", base.data_dir / "nih800")[:200]
    with exported(base, model) as plain:
        plain = replace(plain, http_port=free_ports(1)[0], **HTTP_TIMEOUTS)
        settings = dev_security(plain, plain.run_dir / "pki", "fuzz",
                                ["search", "studies", "admin"], audit_log=plain.run_dir / "audit.log")
        with served(settings, records) as stack:
            made = HostileRequests(settings, base.data_dir / "cxr_samples", seed)
            batch = [made.draw() for _ in range(requests)]
            rss_before = process_tree_rss_mb(stack.gateway_pid)
            started = time.monotonic()
            outcomes = fire(settings, batch, concurrency)
            seconds = time.monotonic() - started
            rss_after = process_tree_rss_mb(stack.gateway_pid)
            http = http_run(settings, stack.gateway_pid, http_requests, seed, concurrency) if http_requests else None
            serving = gateway_process.health(settings) == health_pb2.HealthCheckResponse.SERVING
            png = big_png(settings, stack.gateway_pid)
            audit_lines = len(settings.audit_log.read_text().splitlines())
            errors = gateway_errors(settings.run_dir / gateway_process.LOG_FILE)
    figures = {"hostile": dict(summarize(outcomes), seconds=round(seconds, 1)),
               "rss_mb": {"before": rss_before, "after": rss_after}, "serving_after": serving, "big_png": png,
               "audit_lines": audit_lines, "gateway_errors": errors}
    if http is not None:
        figures.update(http=http, slow_limit_s=max(settings.http_header_timeout_s, settings.http_body_timeout_s) + 1)
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
    parser.add_argument("--http-requests", type=int, default=10_000, help="hostile HTTP requests (0: gRPC only)")
    args = parser.parse_args(argv)
    results = run(args.requests, args.seed, args.concurrency, args.model, args.http_requests)
    figures = results["figures"]
    print(json.dumps({k: v for k, v in figures["hostile"].items() if k != "by_kind"}, indent=2))
    if "http" in figures:
        print(json.dumps({k: v for k, v in figures["http"].items() if k != "by_kind"}, indent=2))
    print(f"RSS {figures['rss_mb']}; big PNG {figures['big_png']}")
    save("fuzz", results)
    return exit_status(results["problems"])


if __name__ == "__main__":
    sys.exit(main())
