"""How soon a report the RIS sent shows in search: from its ORU^R01's AA to its study's GetStudy showing it.

  python -m benchmarks.report_freshness [--messages 50] [--studies 10000]

Exports the demo model into a temporary repository, writes a FAISS index of `--studies` synthetic
studies (random vectors; each with an accession number and patient id the synthetic ORU messages
name), starts the gateway as its own process (no Triton: GetStudy reads the index only) and
`cxr reports listen` on the same report ledger, then for each message: send it, wait for the AA,
and ask GetStudy every 10 ms until the report is there. Messages are sent at random moments of the
gateway's poll period, as a RIS sends them. What it measures is the ledger write, the
gateway's poll (`reports_poll_s`, 1 s by default: the mean wait is half of it) and the store's update.
Figures go to benchmarks/results/<date>-<host>-report-freshness.json.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace

import grpc
import numpy as np

from benchmarks.hl7_ack import Sender, listen
from benchmarks.machine import describe, save
from benchmarks.stack import exported
from cxr import gateway_process
from cxr.catalog import ExportedModel
from cxr.processes import stop_process
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from cxr.settings import load_settings, to_environment
from cxr.store import faiss_writer

MODEL = "cxr-mini"
SEARCHABLE_WITHIN_S = 10.0  # the bound; a report not seen by then is counted as missed
ASK_EVERY_S = 0.01


def _index(settings, count: int) -> None:
    """`count` studies of one image each, named as the synthetic ORU messages name them (hl7_ack.ORU)."""
    model = ExportedModel.load(settings.model_repository, MODEL)
    vectors = np.random.default_rng(0).standard_normal((count, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [{"image_id": f"bench-{n}", "study_uid": f"2.25.{n}", "study_instance_uid": f"2.25.{n}",
             "accession_number": f"BENCH-ACC-{n}", "patient_id": f"BENCH-PAT-{n}", "projection": "Frontal"}
            for n in range(count)]
    faiss_writer.write(settings.index_path(MODEL), vectors, rows,
                       {"model": MODEL, "export_sha256": model.export_sha256, "source": "synthetic"}, [], "flat")


def _seconds_to_searchable(sender: Sender, stub, number: int, pause_s: float) -> float | None:
    time.sleep(pause_s)  # else each report is sent just after the poll that found the one before: the worst case
    sender.send()  # returns on the AA
    acknowledged = time.perf_counter()
    while time.perf_counter() - acknowledged < SEARCHABLE_WITHIN_S:
        study = stub.GetStudy(pb.GetStudyRequest(study_uid=f"2.25.{number}"), timeout=10)
        if study.report_status == "final":
            return time.perf_counter() - acknowledged
        time.sleep(ASK_EVERY_S)
    return None


def run(messages: int, studies: int) -> dict:
    with exported(load_settings(), MODEL) as settings:
        settings = replace(settings, reports_dir=settings.index_dir / "reports")
        _index(settings, studies)
        gateway, log_file = gateway_process.start(settings)
        listener = None
        try:
            gateway_process.wait_answering(settings, gateway, log_file)
            listener, port = listen(settings.index_dir, to_environment(settings))
            sender = Sender(port)
            sender.connect()
            with grpc.insecure_channel(gateway_process.local_address(settings)) as channel:
                stub = retrieval_pb2_grpc.RetrievalStub(channel)
                pauses = np.random.default_rng(1).uniform(0, settings.reports_poll_s, messages)
                seen = [_seconds_to_searchable(sender, stub, n, pauses[n]) for n in range(min(messages, studies))]
            sender.close()
        finally:
            if listener is not None:
                listener.send_signal(signal.SIGTERM)
                listener.wait(30)
            stop_process(gateway)
    found = np.array([s for s in seen if s is not None])
    figures = {"reports": len(seen), "missed": len(seen) - len(found),
               "p50_s": round(float(np.percentile(found, 50)), 3), "p95_s": round(float(np.percentile(found, 95)), 3),
               "max_s": round(float(found.max()), 3)}
    results = {"machine": describe(), "figures": figures,
               "settings": {"studies": studies, "messages": messages, "reports_poll_s": settings.reports_poll_s,
                            "backend": "faiss flat", "ask_every_s": ASK_EVERY_S}}
    print(figures)
    save("report-freshness", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--studies", type=int, default=10_000)
    args = parser.parse_args(argv)
    run(args.messages, args.studies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
