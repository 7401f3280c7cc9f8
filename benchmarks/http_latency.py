"""What the HTTP/JSON API costs beside gRPC, on one real gateway.

  python -m benchmarks.http_latency [--model cxr-mini] [--requests 200]

Starts Triton and the gateway (HTTP API on) as separate processes on free loopback ports, as
`cxr serve` does, indexes the NIH sample through Triton, then times the same text query and the
same image query (a 512 px NIH PNG) sequentially through gRPC (SearchByText / SearchByImage) and
through HTTP (POST /v1/search/text with JSON, POST /v1/search/image with the raw PNG), after a
warm-up, over one kept-alive connection each. The difference of the medians is what transcoding
costs. Figures go to benchmarks/results/<date>-<host>-http.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import httpx

from benchmarks.machine import describe, save
from benchmarks.stack import exported, served
from benchmarks.timing import time_requests
from cxr import archives, registry
from cxr.client import channel_from
from cxr.processes import free_ports
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings

QUERY = "small left pleural effusion"
IMAGE = "cxr_samples/00000001_000.png"  # under data_dir
TOP_K = 10
TIME_LIMIT_S = 300.0
WARMUP = 10


def _ok(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:300]}")


def _grpc(settings: Settings, image: bytes, requests: int) -> dict:
    with channel_from(settings) as channel:
        stub = pb_grpc.RetrievalStub(channel)
        text = pb.SearchByTextRequest(text=QUERY, top_k=TOP_K)
        picture = pb.SearchByImageRequest(image=image, top_k=TOP_K)
        return {"text": time_requests(lambda: stub.SearchByText(text), requests, TIME_LIMIT_S, WARMUP),
                "image": time_requests(lambda: stub.SearchByImage(picture), requests, TIME_LIMIT_S, WARMUP)}


def _http(settings: Settings, image: bytes, requests: int) -> dict:
    with httpx.Client(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as client:
        body = {"text": QUERY, "topK": TOP_K}
        text = lambda: _ok(client.post("/v1/search/text", json=body))  # noqa: E731
        picture = lambda: _ok(client.post("/v1/search/image", params={"top_k": TOP_K}, content=image,  # noqa: E731
                                          headers={"content-type": "image/png"}))
        return {"text": time_requests(text, requests, TIME_LIMIT_S, WARMUP),
                "image": time_requests(picture, requests, TIME_LIMIT_S, WARMUP)}


def _overhead(grpc_figures: dict, http_figures: dict) -> dict:
    return {kind: {p: round(http_figures[kind][f"{p}_ms"] - grpc_figures[kind][f"{p}_ms"], 3) for p in ("p50", "p95")}
            for kind in ("text", "image")}


def run(model_name: str, requests: int) -> dict:
    base = load_settings()
    archive = base.data_dir / "nih800"
    records = archives.nih_labels(archive / "labels.csv", archive)
    image = (base.data_dir / IMAGE).read_bytes()
    with exported(base, model_name) as settings:
        settings = replace(settings, http_port=free_ports(1)[0])
        with served(settings, records):
            grpc_figures = _grpc(settings, image, requests)
            http_figures = _http(settings, image, requests)
    figures = {"grpc": grpc_figures, "http": http_figures, "http_minus_grpc_ms": _overhead(grpc_figures, http_figures)}
    results = {"machine": describe(), "settings": {"model": model_name, "query": QUERY, "image": IMAGE,
                                                   "image_bytes": len(image), "requests": requests, "top_k": TOP_K,
                                                   "warmup": WARMUP}, "figures": figures}
    print(json.dumps(figures, indent=2))
    save("http", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cxr-mini", choices=registry.list_models())
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    run(args.model, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
