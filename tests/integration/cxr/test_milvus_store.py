"""The milvus store on Milvus Lite answers as the faiss store does: the same exact top 10 with and
without filters, the same rows, studies and filter errors; a rebuild switches in whole; a Milvus that
goes away is StoreUnavailableError, and the same store answers again once it is back."""

import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="these tests run Milvus Lite (pip install milvus-lite)")

from cxr.processes import free_ports  # noqa: E402
from cxr.store import faiss_store, faiss_writer  # noqa: E402
from cxr.store.errors import (  # noqa: E402
    IndexMismatchError,
    IndexMissingError,
    StoreUnavailableError,
    UnknownFilterError,
)
from cxr.store.interface import Filter, StudyReport  # noqa: E402
from cxr.store.milvus.aliases import alias_of  # noqa: E402
from cxr.store.milvus.backend import MilvusBackend  # noqa: E402
from cxr.store.milvus.connection import RECONNECT_AFTER_S  # noqa: E402
from cxr.store.milvus.records import MilvusLimitError  # noqa: E402
from support import MilvusLiteFile, index_metadata, unit_vectors  # noqa: E402

MODEL = "m-1"
N, DIM = 300, 24
ODD_LABEL = 'Crohn\'s "x" \\ y'  # quotes and a backslash: filter values are escaped, not pasted


def _metadata(n: int) -> list[dict]:
    rows = index_metadata(n)
    for i, row in enumerate(rows):
        row.update(filename=f"{i}.png", path=f"/archive/é/{i}.png", patient_id=f"p{i // 4}",
                   findings=f"report {i} — ümlaut", impression="" if i % 5 else "no acute disease",
                   sop_instance_uid=f"1.2.3.{i}", view_position="PA", patient_name="Doe^Jane",
                   study_date="" if i % 6 == 0 else f"2019{1 + i % 12:02d}{1 + i % 28:02d}",
                   study_instance_uid=f"1.2.{i // 2}")
        if i % 7 == 0:
            row["labels"] = row["labels"] + [ODD_LABEL]
        if i % 11 == 0:
            row["labels"] = []
    rows[1]["labels"] = ["effusion"]  # another case of Effusion: filters ignore case
    return rows


@pytest.fixture
def lite(tmp_path):
    with MilvusLiteFile(tmp_path / "milvus.db", drop_grace_s=0) as backend:
        yield backend


@pytest.fixture
def pair(tmp_path, lite):
    """The same vectors and rows as a FAISS flat index and a Milvus FLAT collection."""
    vectors, rows = unit_vectors(N, DIM), _metadata(N)
    manifest = {"model": MODEL, "export_sha256": "abc"}
    faiss_writer.write(tmp_path / "faiss", vectors, rows, manifest, [], "flat")
    lite.write(MODEL, vectors, rows, manifest, [("bad.png", "empty")], "flat")
    return faiss_store.load(tmp_path / "faiss"), lite.open(MODEL, dim=DIM, export_sha256="abc")


FILTERS = [Filter(), Filter.of(labels=["EFFUSION", "mass"]), Filter.of(projections=["frontal"]),
           Filter.of(projections=["Lateral"], labels=["no finding", ODD_LABEL.upper()]), Filter.of(labels=[ODD_LABEL]),
           Filter.of(date_from="20190301", date_to="20190630"), Filter.of(date_to="20190215"),
           Filter.of(labels=["Mass"], exclude_patients=[f"p{i}" for i in range(0, 75, 2)], exclude_studies=['s"3', "s5", "1.2.8"])]


@pytest.mark.parametrize("flt", FILTERS, ids=["none", "labels", "projection", "both", "escaped", "dates", "before",
                                              "excluded"])
@pytest.mark.parametrize("k", [10, 60])
def test_exact_search_finds_the_same_top_k_as_faiss_flat(pair, flt, k):
    faiss, milvus = pair
    queries = unit_vectors(40, DIM, seed=5)
    expected, found = faiss.search(queries, k, flt), milvus.search(queries, k, flt)
    assert len(found) == len(queries)
    for want, got in zip(expected, found):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def test_rows_studies_and_filter_errors_are_faiss_s(pair):
    faiss, milvus = pair
    ids = [7, 3, 7, 299, 0]
    assert milvus.rows(ids) == faiss.rows(ids)
    assert milvus.rows([]) == []
    assert milvus.study("s3") == faiss.study("s3") and len(milvus.study("s3")) == 2
    assert milvus.study("nope") == [] and milvus.study('s"3') == [] and milvus.study("x" * 600) == []
    assert milvus.image("12") == faiss.image("12") and milvus.image("12")["sop_instance_uid"] == "1.2.3.12"
    assert milvus.image("nope") is None and milvus.image("x" * 600) is None
    assert (milvus.labels, milvus.projections) == (faiss.labels, faiss.projections)
    for flt in (Filter.of(labels=["Effusion", "Pneumothorax"]), Filter.of(projections=["oblique"])):
        with pytest.raises(UnknownFilterError) as from_faiss:
            faiss.check_filter(flt)
        with pytest.raises(UnknownFilterError, match="it has") as from_milvus:
            milvus.check_filter(flt)
        assert str(from_milvus.value) == str(from_faiss.value)
        with pytest.raises(UnknownFilterError):
            milvus.search(unit_vectors(1, DIM), 5, flt)
    assert (milvus.count, milvus.index_type, milvus.manifest["skipped"]) == (N, "flat", 1)
    assert milvus.size_bytes > N * DIM * 4 and milvus.ready()


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "sq8"])
def test_approximate_indexes_find_each_image_and_fill_narrow_filters(lite, index_type):
    vectors, rows = unit_vectors(N, DIM), _metadata(N)
    lite.write(MODEL, vectors, rows, {"model": MODEL}, [], index_type)
    store = lite.open(MODEL)
    assert store.manifest["milvus_index"]["type"] == {"hnsw": "HNSW", "ivf": "IVF_FLAT", "sq8": "IVF_SQ8"}[index_type]
    found = store.search(vectors[:20], 1)
    assert [hits[0][0] for hits in found] == list(range(20))
    narrow = Filter.of(labels=[ODD_LABEL])  # 1 image in 7: fewer than k in the lists one probe reads
    passing = sum(ODD_LABEL in r["labels"] for r in rows)
    assert all(len(hits) == min(50, passing) for hits in store.search(vectors[:5], 50, narrow))


def test_index_types_milvus_lite_cannot_build_are_refused(lite):
    vectors, rows = unit_vectors(10, DIM), _metadata(10)
    for index_type, message in (("ivfpq", "Milvus Lite cannot build IVF_PQ"), ("opq", "no Milvus counterpart")):
        with pytest.raises(ValueError, match=message):
            lite.write(MODEL, vectors, rows, {"model": MODEL}, [], index_type)
    with pytest.raises(ValueError, match="--rerank"):
        lite.write(MODEL, vectors, rows, {"model": MODEL}, [], "sq8", rerank=True)
    assert lite.version(MODEL) is None


def test_identifiers_too_long_are_refused_and_long_reports_cut_at_a_character(lite):
    vectors, rows = unit_vectors(3, DIM), _metadata(3)
    rows[1]["findings"] = "é" * 40_000  # 80,000 UTF-8 bytes
    manifest = lite.write(MODEL, vectors, rows, {"model": MODEL}, [], "flat")
    assert manifest["truncated_reports"] == 1
    assert lite.open(MODEL).rows([1])[0]["findings"] == "é" * 32_767
    rows[2]["path"] = "/x" * 3000
    with pytest.raises(MilvusLimitError, match=r"image 2 \('2'\) has path of 6000 bytes.*4096"):
        lite.write(MODEL, vectors, rows, {"model": MODEL}, [], "flat")
    assert lite.open(MODEL).count == 3  # the refused build changed nothing


def test_missing_and_mismatched_indexes_are_refused_naming_the_rebuild(lite):
    assert lite.version(MODEL) is None
    with pytest.raises(IndexMissingError, match=f"no index of {MODEL} .*collection {alias_of(MODEL)}"):
        lite.open(MODEL)
    lite.write(MODEL, unit_vectors(5, DIM), _metadata(5), {"model": MODEL}, [], "flat")
    with pytest.raises(IndexMismatchError, match=rf"{MODEL} \(24-d\).*serves {MODEL} \(1152-d\).*--model {MODEL}"):
        lite.open(MODEL, dim=1152)
    with pytest.raises(IndexMismatchError, match="another export"):
        lite.open(MODEL, export_sha256="0123456789abcdef")


def test_a_rebuild_switches_in_whole_and_the_old_collection_serves_until_dropped(tmp_path):
    with MilvusLiteFile(tmp_path / "milvus.db", drop_grace_s=3) as lite:
        lite.write(MODEL, unit_vectors(N, DIM), _metadata(N), {"model": MODEL}, [], "flat")
        first, old = lite.version(MODEL), lite.open(MODEL)
        query = unit_vectors(1, DIM, seed=9)
        before = old.search(query, 10)

        with pytest.raises(RuntimeError), lite.writer(MODEL, DIM, 40, "flat", {"model": MODEL}) as failed:
            failed.add(unit_vectors(40, DIM, seed=2), _metadata(40))
            raise RuntimeError("the build died")
        assert _collections(lite) == [first]  # its half-built collection is gone, the old one untouched

        writer = lite.writer(MODEL, DIM, 40, "flat", {"model": MODEL})
        writer.add(unit_vectors(40, DIM, seed=1), _metadata(40))
        assert lite.version(MODEL) == first and lite.open(MODEL).count == N  # not switched before finish
        finishing = threading.Thread(target=writer.finish)
        finishing.start()
        _wait(lambda: lite.version(MODEL) != first)
        assert lite.open(MODEL).count == 40
        assert old.search(query, 10) == before and old.rows([N - 1])  # in the grace period: still served
        finishing.join(30)
        assert _collections(lite) == [lite.version(MODEL)]
        with pytest.raises(StoreUnavailableError, match="gone .*newer build"):
            old.search(query, 10)
        assert not old.ready()


def test_a_store_answers_again_when_its_milvus_server_is_back(tmp_path):
    """A standalone Milvus Lite server (the cluster code path: an http:// URI) killed and restarted."""
    (port,) = free_ports(1)
    server = _MilvusServer(tmp_path / "server.db", port)
    try:
        backend = MilvusBackend(f"http://127.0.0.1:{port}")
        backend.write(MODEL, unit_vectors(N, DIM), _metadata(N), {"model": MODEL}, [], "flat")
        store, query = backend.open(MODEL), unit_vectors(3, DIM, seed=4)
        before, row = store.search(query, 10), store.rows([1])
        server.stop()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port} is unreachable"):
            store.search(query, 10)
        assert not store.ready()
        with pytest.raises(StoreUnavailableError):
            backend.version(MODEL)
        server.start()
        _wait(store.ready, 30)  # the restarted server had forgotten the collection was loaded
        assert store.search(query, 10) == before and store.rows([1]) == row
        backend.close()
    finally:
        server.stop()


def test_a_milvus_lite_file_reopens_after_its_server_stops(tmp_path):
    from milvus_lite import server_manager_instance

    with MilvusLiteFile(tmp_path / "milvus.db") as lite:
        lite.write(MODEL, unit_vectors(N, DIM), _metadata(N), {"model": MODEL}, [], "flat")
        store, query = lite.open(MODEL), unit_vectors(2, DIM, seed=8)
        before = store.search(query, 10)
        server_manager_instance.release_server(str(tmp_path / "milvus.db"))
        with pytest.raises(StoreUnavailableError):
            store.search(query, 10)
        time.sleep(RECONNECT_AFTER_S)
        assert store.search(query, 10) == before  # a new client started a new server for the file


def test_a_milvus_lite_file_held_by_another_process_is_unavailable_naming_the_remedy(tmp_path):
    (port,) = free_ports(1)
    server = _MilvusServer(tmp_path / "held.db", port)
    try:
        with pytest.raises(StoreUnavailableError, match="one process at a time.*milvus-lite server --data-dir"):
            MilvusBackend(str(tmp_path / "held.db")).version(MODEL)
    finally:
        server.stop()


def _collections(backend) -> list[str]:
    return sorted(backend.connection.call(lambda c: c.list_collections()))


def _wait(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class _MilvusServer:
    """`milvus-lite server` as a child process on a fixed loopback port, killed and started again."""

    def __init__(self, data_dir, port: int):
        self.data_dir, self.port, self.process = data_dir, port, None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._listening, 60)

    def _listening(self) -> bool:
        assert self.process.poll() is None, f"milvus-lite server exited with {self.process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def test_reports_amend_rows_and_label_filters_as_in_faiss(pair):
    faiss, milvus = pair
    report = StudyReport(findings="Small left effusion.", impression="Effusion.", labels=("Effusion", "Atelectasis"),
                         status="corrected", time="2026-12-03T08:00:00")
    for store in pair:
        store.apply_reports({"s3": report, "s5": StudyReport(status="cancelled"), "not-indexed": report})
    assert milvus.study("s3") == faiss.study("s3")
    assert milvus.study("s3")[0]["findings"] == "Small left effusion." and milvus.study("s5")[0]["labels"] == []
    assert milvus.study("s3")[0]["report_status"] == "corrected" and milvus.study("s3")[0]["labels_derived"]
    assert milvus.labels == faiss.labels and "Atelectasis" in milvus.labels
    queries = unit_vectors(5, DIM, seed=9)
    flt = Filter.of(labels=["atelectasis"])
    assert sorted(i for i, _ in milvus.search(queries, 5, flt)[0]) == [6, 7]  # study s3's two images
    assert [i for i, _ in milvus.search(queries[:1], N, Filter.of(labels=["mass"]))[0]] == \
        [i for i, _ in faiss.search(queries[:1], N, Filter.of(labels=["mass"]))[0]]
    assert {(s.study_uid, s.patient_id) for s in milvus.studies()} == {(s.study_uid, s.patient_id)
                                                                       for s in faiss.studies()}
