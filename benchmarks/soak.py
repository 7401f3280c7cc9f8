"""`make soak`: 32 clients sending mixed queries for 10 minutes, first to the gateway as it runs in
a hospital (mutual TLS, tokens, audit log), then to the same gateway open (plaintext, no auth, no
audit): errors, p50/p99 and q/s of each, their ratio (the cost of security), the gateway's RSS over
time, and the audit log checked against what the clients were answered (every call exactly once,
`cxr audit verify` passing, and failing once a line is edited). After each soak one client runs
alone for a minute: at saturation latency is queueing, alone it is the per-call cost.

    make soak                                        # 10 minutes each
    python -m benchmarks.soak --minutes 1 --clients 8
Results: benchmarks/results/<date>-<host>-soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks.machine import describe, exit_status, save
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import archives
from cxr.archives import Record
from cxr.client import channel_from
from cxr.dev_pki import dev_security
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from gateway import audit_chain
from training.data import label_prompt

MAX_REQUESTS_PER_CLIENT = 200_000  # a bound besides time, whatever the machine
PROBE_S = 60.0  # one client alone after the soak: the per-call cost of security, without queueing
RSS_PERIOD_S = 5.0
DEADLINE_S = 30.0


class Mix:
    """Mixed queries as a viewer sends them: text 40 %, image 40 %, a report 10 %, a small batch 10 %."""

    def __init__(self, records: list[Record], seed: int):
        self.rng = random.Random(seed)
        labels = sorted({label for r in records for label in r.labels})
        self.texts = [label_prompt(label) for label in labels] + ["small left pleural effusion"]
        self.images = [r.path.read_bytes() for r in records[:32]]
        self.studies = sorted({r.study_uid for r in records})

    def send(self, stub):
        """One call; returns (kind, response, call)."""
        kind = self.rng.choices(["text", "image", "study", "batch"], [4, 4, 1, 1])[0]
        if kind == "text":
            return kind, *stub.SearchByText.with_call(pb.SearchByTextRequest(text=self.rng.choice(self.texts),
                                                                             top_k=10), timeout=DEADLINE_S)
        if kind == "image":
            return kind, *stub.SearchByImage.with_call(pb.SearchByImageRequest(image=self.rng.choice(self.images),
                                                                               top_k=10), timeout=DEADLINE_S)
        if kind == "study":
            return kind, *stub.GetStudy.with_call(pb.GetStudyRequest(study_uid=self.rng.choice(self.studies)),
                                                  timeout=DEADLINE_S)
        queries = [pb.SearchQuery(text=pb.SearchByTextRequest(text=self.rng.choice(self.texts), top_k=5)),
                   pb.SearchQuery(image=pb.SearchByImageRequest(image=self.rng.choice(self.images), top_k=5))]
        return kind, *stub.BatchSearch.with_call(pb.BatchSearchRequest(queries=queries), timeout=DEADLINE_S)


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    first_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(settings: Settings, records, seed: int, deadline: float, tally: Tally) -> None:
    mix = Mix(records, seed)
    with channel_from(settings) as channel:
        stub = pb_grpc.RetrievalStub(channel)
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                _, _, call = mix.send(stub)
                code, request_id = "OK", dict(call.trailing_metadata())["x-request-id"]
            except grpc.RpcError as error:
                code, request_id = error.code().name, dict(error.trailing_metadata() or ()).get("x-request-id", "")
                tally.first_error = tally.first_error or f"{code}: {error.details()}"[:300]
            elapsed = (time.perf_counter() - started) * 1000
            with tally.lock:
                tally.codes[code] += 1
                tally.request_ids.append(request_id)
                if code == "OK":
                    tally.latencies_ms.append(elapsed)


def _load(settings: Settings, records, clients: int, seconds: float, gateway_pid: int) -> dict:
    tally, rss = Tally(), []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(settings, records, i, deadline, tally)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        rss.append((round(time.monotonic() - started, 1), process_tree_rss_mb(gateway_pid)))
        time.sleep(RSS_PERIOD_S)
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    p50, p99 = np.percentile(tally.latencies_ms, [50, 99]) if tally.latencies_ms else (0.0, 0.0)
    return {"clients": clients, "seconds": round(wall, 1), "requests": sum(tally.codes.values()),
            "codes": dict(tally.codes), "errors": sum(n for c, n in tally.codes.items() if c != "OK"),
            "first_error": tally.first_error, "qps": round(len(tally.latencies_ms) / wall, 1),
            "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "rss_mb": rss,
            "rss_growth_pct": _rss_growth(rss), "_request_ids": tally.request_ids}


def _rss_growth(samples: list[tuple[float, float]]) -> float:
    """RSS over the last fifth of the run against the second fifth (the first is warm-up), in %."""
    values = [mb for _, mb in samples]
    if len(values) < 5:
        return 0.0
    fifth = len(values) // 5
    early, late = np.mean(values[fifth:2 * fifth]), np.mean(values[-fifth:])
    return round(float((late - early) / early * 100), 2)


def check_audit(log: Path, request_ids: list[str], scratch: Path) -> dict:
    """Every answered call in the log exactly once; the chain verifies; an edited copy does not."""
    files = audit_chain.log_files([log])
    key = audit_chain.read_key(audit_chain.key_file(log))
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    logged = Counter(line["request_id"] for line in lines)
    sent = Counter(request_ids)
    problem, checked = audit_chain.verify(files, key)
    edited = scratch / "edited"
    edited.mkdir(exist_ok=True)
    copies = [Path(shutil.copy(path, edited / path.name)) for path in files]
    text = copies[-1].read_text().splitlines(keepends=True)
    middle = len(text) // 2
    text[middle] = text[middle].replace('"status":"OK"', '"status":"NOT_FOUND"', 1)
    copies[-1].write_text("".join(text))
    tampered, _ = audit_chain.verify(copies, key)
    return {"lines": len(lines), "files": len(files), "calls_answered": len(request_ids),
            "calls_missing_from_log": sum(1 for rid in sent if logged[rid] == 0),
            "calls_logged_more_than_once": sum(1 for rid in sent if logged[rid] > 1),
            "lines_without_a_call": sum(1 for rid in logged if rid not in sent),
            "verify": "intact" if problem is None else str(problem), "verified_lines": checked,
            "verify_after_editing_one_line": str(tampered) if tampered else "NOT DETECTED"}


def _phases(settings: Settings, records, clients: int, seconds: float, probe_s: float, pid: int) -> tuple[dict, dict]:
    """The soak at `clients`, then one client alone for `probe_s`: latency per call without queueing."""
    soak = _load(settings, records, clients, seconds, pid)
    probe = _load(settings, records, 1, probe_s, pid)
    return soak, probe


def run(minutes: float, clients: int, model: str = "cxr-mini", probe_s: float = PROBE_S) -> dict:
    base = load_settings()
    archive = base.data_dir / "nih800"
    records = archives.nih_labels(archive / "labels.csv", archive)
    seconds = minutes * 60
    with exported(base, model) as plain:
        secured = dev_security(plain, plain.run_dir / "pki", "soak-viewer", ["search", "studies"],
                               audit_log=plain.run_dir / "audit" / "audit.log", ttl_s=seconds * 3 + 3600)
        runs, probes = {}, {}
        with served(secured, records) as stack:
            print(f"secured: {clients} clients for {minutes:g} min, then 1 for {probe_s:g} s", flush=True)
            runs["secured"], probes["secured"] = _phases(secured, records, clients, seconds, probe_s, stack.gateway_pid)
        answered = runs["secured"].pop("_request_ids") + probes["secured"].pop("_request_ids")
        audit_check = check_audit(secured.audit_log, answered, plain.run_dir)
        with served(plain, records, rebuild_index=False) as stack:
            print(f"open: {clients} clients for {minutes:g} min, then 1 for {probe_s:g} s", flush=True)
            runs["open"], probes["open"] = _phases(plain, records, clients, seconds, probe_s, stack.gateway_pid)
            for phase in (runs, probes):
                phase["open"].pop("_request_ids")
    cost = {"soak": _cost(runs), "one_client": _cost(probes)}
    return {"machine": describe(), "settings": {"model": model, "minutes": minutes, "clients": clients,
                                                "mix": "text 40 %, image 40 %, GetStudy 10 %, batch of 2 10 %",
                                                "secured": "mutual TLS, JWT auth, audit log (rate limit off)",
                                                "open": "plaintext, no auth, no audit (rate limit off)"},
            "figures": {"runs": runs, "one_client": probes, "security_cost": cost, "audit": audit_check}}


def _cost(runs: dict) -> dict:
    """secured / open for p50, p99 and q/s."""
    on, off = runs["secured"], runs["open"]
    return {"p50_ratio": _ratio(on["p50_ms"], off["p50_ms"]), "p99_ratio": _ratio(on["p99_ms"], off["p99_ms"]),
            "qps_ratio": _ratio(on["qps"], off["qps"])}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def problems(results: dict) -> list[str]:
    figures = results["figures"]
    phases = [*figures["runs"].items(), *figures["one_client"].items()]
    found = [f"{name}: {r['errors']} errors ({r['first_error']})" for name, r in phases if r["errors"]]
    found += [f"{name}: RSS grew {r['rss_growth_pct']} %" for name, r in figures["runs"].items()
              if r["rss_growth_pct"] >= 5]
    a = figures["audit"]
    if a["calls_missing_from_log"] or a["calls_logged_more_than_once"] or a["verify"] != "intact":
        found.append(f"audit: {a}")
    if a["verify_after_editing_one_line"] == "NOT DETECTED":
        found.append("audit: an edited line was not detected")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="per run (secured, then open)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--model", default="cxr-mini")
    args = parser.parse_args(argv)
    results = run(args.minutes, args.clients, args.model)
    results["problems"] = problems(results)
    figures = results["figures"]
    for phase in ("runs", "one_client"):
        for name, r in figures[phase].items():
            print(f"{name} ({r['clients']} clients): {r['requests']} calls, {r['errors']} errors, {r['qps']} q/s, "
                  f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, RSS growth {r['rss_growth_pct']} %")
    print(f"security cost: {figures['security_cost']}\naudit: {figures['audit']}")
    save("soak", results)
    return exit_status(results["problems"])


if __name__ == "__main__":
    sys.exit(main())
