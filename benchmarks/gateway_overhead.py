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
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc

from benchmarks.machine import describe, result_path
from benchmarks.timing import time_requests
from cxr import registry, tritonserver
from cxr.processes import free_ports, stop_process
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings
from cxr.triton_client import TowerClient
from gateway import process as gateway_process
from gateway.catalog import ExportedModel
from indexing import sources
from indexing.build import BuildOptions, build_index

QUERY = "small left pleural effusion"
TIME_LIMIT_S = 120.0
WARMUP = 10  # requests that open connections and fill caches before timing


def _index_rate(model: ExportedModel, settings: Settings) -> dict:
    archive = settings.data_dir / "nih800"
    records = sources.nih_labels(archive / "labels.csv", archive)
    started = time.perf_counter()
    build_index(records, model, settings, settings.index_path(model.name), BuildOptions(progress=False))
    seconds = time.perf_counter() - started
    return {"images": len(records), "seconds": round(seconds, 2), "images_per_s": round(len(records) / seconds, 1)}


def _latencies(model: ExportedModel, settings: Settings, requests: int) -> dict:
    triton = TowerClient(settings.triton_grpc_url, model.image, model.text, model.max_batch_size)
    direct = time_requests(lambda: triton.embed_texts(model.tokenizer([QUERY])), requests, TIME_LIMIT_S, WARMUP)
    triton.close()
    with grpc.insecure_channel(settings.gateway_address) as channel:
        stub = pb_grpc.RetrievalStub(channel)
        request = pb.SearchByTextRequest(text=QUERY, top_k=10)
        through = time_requests(lambda: stub.SearchByText(request), requests, TIME_LIMIT_S, WARMUP)
    return {"triton_direct": direct, "gateway": through,
            "overhead_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
            "overhead_p95_ms": round(through["p95_ms"] - direct["p95_ms"], 3)}


def run(model_name: str, requests: int) -> dict:
    spec = registry.get_model(model_name)
    http, grpc_port, metrics, gateway_port = free_ports(4)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        settings = replace(load_settings(), model=model_name, model_repository=Path(tmp) / "model_repository",
                           index_dir=Path(tmp) / "indexes", run_dir=Path(tmp) / "run", triton_http_port=http,
                           triton_grpc_port=grpc_port, triton_metrics_port=metrics, gateway_port=gateway_port)
        from export.repository import export_model

        export_model(spec, settings, log=lambda *_: None)
        model = ExportedModel.load(settings.model_repository, model_name)
        triton, triton_log = tritonserver.start(settings)
        children = [triton]
        try:
            tritonserver.wait_ready(settings, [spec.image_model, spec.text_model], triton, 300, triton_log)
            figures = {"index_build": _index_rate(model, settings)}
            gateway, gateway_log = gateway_process.start(settings)
            children.append(gateway)
            gateway_process.wait_answering(settings, gateway, gateway_log)
            time.sleep(2)  # let the health task load the index
            figures["text_query"] = _latencies(model, settings, requests)
        finally:
            for child in reversed(children):
                stop_process(child)
    results = {"machine": describe(), "settings": {"model": model_name, "query": QUERY, "requests": requests,
                                                   "top_k": 10}, "figures": figures}
    path = result_path("gateway")
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")
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
