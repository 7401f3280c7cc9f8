"""Index faults under load, through the real gateway and Triton: a corrupt build is refused while the
previous index keeps serving, a rebuild is picked up with no failed query, a removed index stops
being served; the reload watcher lives through all of it."""

import logging
import shutil
import threading
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cxr import archives, gateway_process
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from cxr.store import faiss_files
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"


class Load:
    """Two clients querying until stopped (at most 5,000 calls), keeping every status code."""

    def __init__(self, address: str):
        self.codes, self._stop = [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address,)) for _ in range(2)]
        for thread in self._threads:
            thread.start()

    def _run(self, address):
        with RetrievalClient(address, retries=0, deadline_s=30) as client:
            for _ in range(2500):
                if self._stop.is_set():
                    return
                try:
                    client.search_text("pleural effusion", top_k=5)
                    self.codes.append("OK")
                except grpc.RpcError as error:
                    self.codes.append(error.code().name)

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.codes


def _index_size(client) -> int:
    return next(m.index_size for m in client.list_models().models if m.name == MODEL)


def _wait(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_corrupt_build_refused_rebuild_picked_up_removal_stops_serving(served, nih_index, tmp_path, caplog):
    settings = replace(served, model=MODEL, index_dir=tmp_path / "indexes", rate_limit_per_s=0)
    shutil.copytree(nih_index, settings.index_path(MODEL))
    background = BackgroundGateway(settings)
    local = replace(settings, gateway_port=int(background.address.split(":")[1]))
    client = RetrievalClient(background.address, retries=0)
    try:
        load = Load(background.address)
        corrupt = tmp_path / "corrupt"
        shutil.copytree(nih_index, corrupt)
        index_file = corrupt / faiss_files.INDEX_FILE
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
        with caplog.at_level(logging.ERROR, logger="cxr.gateway.indexes"):
            shutil.rmtree(settings.index_path(MODEL))
            corrupt.rename(settings.index_path(MODEL))  # copied: the manifest keeps its old time
            _wait(lambda: "refused the new index build" in caplog.text)
        assert faiss_files.INDEX_FILE in caplog.text
        assert _index_size(client) == 800
        assert gateway_process.health(local) == health_pb2.HealthCheckResponse.SERVING

        records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")[:300]
        build_index(records, ExportedModel.load(settings.model_repository, MODEL), settings,
                    settings.index_path(MODEL), BuildOptions(progress=False, workers=1))
        _wait(lambda: _index_size(client) == 300)
        codes = load.stop()
        assert len(codes) > 20 and set(codes) == {"OK"}, set(codes)

        shutil.rmtree(settings.index_path(MODEL))
        _wait(lambda: gateway_process.health(local) == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as error:
            client.search_text("effusion")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        client.close()
        background.stop()
