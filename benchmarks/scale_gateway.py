"""The served stack at archive scale: real Triton and the real gateway (gRPC over loopback,
cxr-mini), the 800-image NIH index beside 1M synthetic images, each index served by a freshly
started gateway so that start-up and memory are its own."""

from __future__ import annotations

import time

from benchmarks.compare import _gateway_sender, _Queries
from benchmarks.load import run_load
from benchmarks.stack import exported, process_tree_rss_mb, served
from cxr import archives, gateway_process, registry
from cxr.catalog import ExportedModel
from cxr.client import channel_from
from cxr.processes import stop_process
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import load_settings
from cxr.store.faiss_backend import FaissBackend
from indexing import synthetic

MODEL = "cxr-mini"
CONCURRENCY = 16
MAX_REQUESTS = 3000
MAX_SECONDS = 20.0
LARGE = 1_000_000
FILTER_LABEL = "Effusion"  # in the NIH labels and in the synthetic ones


def _filtered_text_sender(settings, queries: _Queries, label: str):
    def make():
        stub, nxt = pb_grpc.RetrievalStub(channel_from(settings)), queries.cycle("text")
        return lambda: stub.SearchByText(pb.SearchByTextRequest(text=nxt(), top_k=10,
                                                                filters=pb.Filters(labels=[label])), timeout=120)
    return make


def _served_by_a_new_gateway(settings, queries: _Queries) -> dict:
    started = time.perf_counter()
    process, log = gateway_process.start(settings)
    try:
        gateway_process.wait_answering(settings, process, log)
        gateway_process.wait_serving(settings)
        figures = {"startup_s": round(time.perf_counter() - started, 2),
                   "rss_idle_mb": process_tree_rss_mb(process.pid)}
        for name, make in (("image", _gateway_sender(settings, "image", queries)),
                           ("text", _gateway_sender(settings, "text", queries)),
                           ("text_filtered", _filtered_text_sender(settings, queries, FILTER_LABEL))):
            figures[name] = run_load(make, CONCURRENCY, MAX_REQUESTS, MAX_SECONDS)
        figures["image_c1"] = run_load(_gateway_sender(settings, "image", queries), 1, 300, MAX_SECONDS)
        figures["rss_peak_mb"] = process_tree_rss_mb(process.pid, "VmHWM")
        return figures
    finally:
        stop_process(process)


def gateway_part(log=print) -> dict:
    nih = load_settings().data_dir / "nih800"
    records = archives.nih_labels(nih / "labels.csv", nih)
    queries = _Queries(records)
    dim = registry.get_model(MODEL).embed_dim
    results = {}
    with exported(load_settings(), MODEL) as settings:
        with served(settings, records, gateway=False) as stack:  # Triton up, the NIH index built through it
            results["nih800/flat"] = dict(_served_by_a_new_gateway(settings, queries), vectors=len(records),
                                          index_build=stack.index_build)
            log("nih800/flat", _summary(results["nih800/flat"]))
            export_sha256 = ExportedModel.load(settings.model_repository, MODEL).export_sha256
            for index_type in ("flat", "ivf"):
                started = time.perf_counter()
                synthetic.write(FaissBackend(settings.index_dir), MODEL, dim, LARGE, index_type,
                                {"export_sha256": export_sha256}, progress=False)
                key = f"{LARGE}/{index_type}"
                results[key] = dict(_served_by_a_new_gateway(settings, queries), vectors=LARGE,
                                    vector_mb=round(LARGE * dim * 4 / 2**20, 1),
                                    synth_s=round(time.perf_counter() - started, 1))
                log(key, _summary(results[key]))
    return results


def _summary(figures: dict) -> dict:
    return {"startup_s": figures["startup_s"], "rss_peak_mb": figures["rss_peak_mb"],
            **{f"{kind}_qps": figures[kind]["qps"] for kind in ("image", "text", "text_filtered")},
            "image_p50_ms": figures["image"].get("p50_ms"), "errors": sum(figures[k]["errors"] for k in
                                                                          ("image", "text", "text_filtered"))}
