"""The gateway SIGKILLed at random moments while it answers DeleteStudy calls, with compactions of the same
index running beside it: after each restart, every study whose deletion was acknowledged is gone from the
index, the studies never named are all there, the audit trail verifies across the kills and has a line for
each acknowledged deletion (tests/integration/cxr/test_faiss_durability.py kills the writers of commits)."""

import json
import random
import signal
import threading
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from cxr import gateway_process
from cxr.catalog import ExportedModel
from cxr.processes import free_ports
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.store.faiss_backend import FaissBackend
from gateway.audit_chain import verify_log
from support import GATEWAY_MODEL

pytestmark = pytest.mark.triton
MODEL = GATEWAY_MODEL
STUDIES, PER_STUDY = 600, 4
TRIALS = 8


def _index(settings) -> None:
    model = ExportedModel.load(settings.model_repository, MODEL)
    n = STUDIES * PER_STUDY
    vectors = np.random.default_rng(0).standard_normal((n, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [{"image_id": f"img-{i}", "study_uid": f"2.25.{i // PER_STUDY}", "projection": "Frontal"} for i in range(n)]
    FaissBackend(settings.index_dir).write(MODEL, vectors, rows, {"model": MODEL, "dim": model.embed_dim,
                                                                  "export_sha256": model.export_sha256}, [], "ivf")


class Deleter:
    """Deletes studies one after another until the gateway goes away, noting each acknowledgement."""

    def __init__(self, address: str, studies: list[str]):
        self.address, self.studies = address, studies
        self.acknowledged: list[str] = []
        self.attempted: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            for study in self.studies:
                self.attempted.append(study)
                try:
                    stub.DeleteStudy(pb.DeleteStudyRequest(model=MODEL, study_uid=study), timeout=10)
                except grpc.RpcError:
                    return  # the gateway was killed
                self.acknowledged.append(study)


def _compacting(backend: FaissBackend, stop: threading.Event) -> None:
    while not stop.is_set():
        backend.compact(MODEL)


def test_a_killed_gateway_keeps_every_acknowledged_deletion_and_its_audit_line(served, tmp_path):
    port, = free_ports(1)
    settings = replace(served, model=MODEL, index_dir=tmp_path / "indexes", run_dir=tmp_path / "run",
                       audit_log=tmp_path / "audit" / "audit.log", rate_limit_per_s=0, gateway_port=port,
                       metrics_port=0, http_port=0)
    _index(settings)
    order = [f"2.25.{s}" for s in random.Random(0).sample(range(STUDIES), STUDIES)]
    acknowledged, attempted, choose = [], set(), random.Random(1)
    for trial in range(TRIALS):
        process, log_file = gateway_process.start(settings)
        stop = threading.Event()
        compactor = threading.Thread(target=_compacting, args=(FaissBackend(settings.index_dir), stop))
        try:
            gateway_process.wait_answering(settings, process, log_file)
            deleter = Deleter(gateway_process.local_address(settings), [s for s in order if s not in attempted])
            worker = threading.Thread(target=deleter.run)
            worker.start()
            compactor.start()
            time.sleep(0.2 + choose.random())
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            worker.join(30)
        finally:
            stop.set()
            if compactor.is_alive():
                compactor.join(120)
            if process.poll() is None:
                process.kill()
        acknowledged += deleter.acknowledged
        attempted.update(deleter.attempted)
        store = FaissBackend(settings.index_dir).open(MODEL)
        assert not [s for s in acknowledged if store.study(s)], f"trial {trial}: an acknowledged deletion came back"
        untouched = [s for s in order if s not in attempted]
        assert all(len(store.study(s)) == PER_STUDY for s in untouched[:50]), f"trial {trial}: a study was lost"
        assert store.count >= len(untouched) * PER_STUDY
    fault, lines = verify_log(settings.audit_log)
    assert fault is None, fault
    audited = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    deleted = {uid for line in audited if line.get("method", "").endswith("DeleteStudy") and line["status"] == "OK"
               for uid in line["study_uids"]}
    assert set(acknowledged) <= deleted and len(acknowledged) > TRIALS
    print(f"{TRIALS} kills, {len(acknowledged)} deletions acknowledged, {lines} audit lines verified")
