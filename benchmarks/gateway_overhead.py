"""What the gateway costs on top of Triton, and how fast an index builds, on this machine.

  python -m benchmarks.gateway_overhead [--model medsiglip-tiny] [--requests 300]

Starts Triton and the gateway as separate processes on free loopback ports (as `cxr serve`
does), indexes the NIH sample through Triton (images/s), then times the same text query
sequentially (a) straight to Triton's text tower with tritonclient, after tokenising, and
(b) through the gateway's SearchByText (tokenise, Triton, FAISS top 10, metadata join).
The difference of the medians is the gateway overhead. Figures go to
benchmarks/results/<date>-<host>-gateway.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.machine import describe, save
from benchmarks.stack import exported, served
from benchmarks.timing import time_requests
from cxr import archives, registry
from cxr.catalog import ExportedModel
from cxr.client import channel_from
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient

QUERY = "small left pleural effusion"
TIME_LIMIT_S = 120.0
WARMUP = 10  # requests that open connections and fill caches before timing


def _latencies(model: ExportedModel, settings: Settings, requests: int) -> dict:
    triton = TowerClient(connections(settings), model.image, model.text, model.max_batch_size)
    direct = time_requests(lambda: triton.embed_texts(model.tokenizer([QUERY])), requests, TIME_LIMIT_S, WARMUP)
    triton.close()
    with channel_from(settings) as channel:
        stub = pb_grpc.RetrievalStub(channel)
        request = pb.SearchByTextRequest(text=QUERY, top_k=10)
        through = time_requests(lambda: stub.SearchByText(request), requests, TIME_LIMIT_S, WARMUP)
    return {"triton_direct": direct, "gateway": through,
            "overhead_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
            "overhead_p95_ms": round(through["p95_ms"] - direct["p95_ms"], 3)}


def run(model_name: str, requests: int) -> dict:
    archive = load_settings().data_dir / "nih800"
    records = archives.nih_labels(archive / "labels.csv", archive)
    with exported(load_settings(), model_name) as settings, served(settings, records) as stack:
        model = ExportedModel.load(settings.model_repository, model_name)
        figures = {"index_build": stack.index_build, "text_query": _latencies(model, settings, requests)}
    results = {"machine": describe(), "settings": {"model": model_name, "query": QUERY, "requests": requests,
                                                   "top_k": 10}, "figures": figures}
    print(json.dumps(figures, indent=2))
    save("gateway", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medsiglip-tiny", choices=registry.list_models())
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    run(args.model, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
