"""What the gateway serves: checked builds replace the index, bad ones leave the previous one serving."""

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import pytest

from cxr.store import faiss_files, faiss_writer
from cxr.store.errors import IndexCorruptError, IndexMismatchError, IndexMissingError
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from gateway.indexes import IndexSet
from gateway.metrics import GatewayMetrics

DIM = 8


@dataclass
class FakeModel:
    name: str = "m"
    embed_dim: int = DIM
    export_sha256: str = "a" * 64


def _build(directory, n, export_sha256="a" * 64, model="m"):
    vectors = np.random.default_rng(n).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadata = [{"image_id": str(i), "study_uid": f"s{i}"} for i in range(n)]
    faiss_writer.write(directory, vectors, metadata, {"model": model, "export_sha256": export_sha256}, [], "flat")


def _touch_manifest(directory):
    manifest = directory / faiss_files.MANIFEST_FILE
    stamp = manifest.stat().st_mtime_ns + 1_000_000
    os.utime(manifest, ns=(stamp, stamp))


@pytest.fixture
def served(tmp_path):
    _build(tmp_path / "m", 10)
    metrics = GatewayMetrics()
    indexes = IndexSet(FaissBackend(tmp_path), {"m": FakeModel()}, metrics=metrics)
    assert indexes.index("m").store.count == 10
    return tmp_path, indexes, metrics


def _size(indexes):
    return indexes.index("m").store.count


def test_a_new_build_replaces_the_index_without_a_restart(served):
    root, indexes, metrics = served
    _build(root / "m", 12)
    indexes.refresh()
    assert _size(indexes) == 12 and metrics.index_vectors.labels("m")._value.get() == 12


def test_a_call_that_took_the_index_before_a_swap_still_searches_it(served):
    root, indexes, _ = served
    taken = indexes.index("m")  # what a call in flight holds while `cxr index build` swaps
    _build(root / "m", 12)
    indexes.refresh()
    hits = asyncio.run(taken.search(np.full(DIM, DIM ** -0.5, np.float32), 3))
    assert len(hits) == 3 and _size(indexes) == 12


@pytest.mark.parametrize("damage", ["truncate", "flip", "metadata"])
def test_a_damaged_build_is_refused_and_the_previous_index_keeps_serving(served, damage, caplog):
    root, indexes, metrics = served
    staged = root / "staged"
    _build(staged, 12)
    target = staged / ("table/image_id.bytes" if damage == "metadata" else faiss_files.INDEX_FILE)
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    shutil.rmtree(root / "m")
    staged.rename(root / "m")
    _touch_manifest(root / "m")
    with caplog.at_level(logging.ERROR, logger="cxr.gateway.indexes"):
        indexes.refresh()
    assert _size(indexes) == 10
    assert "still serving the previous one" in caplog.text and target.name in caplog.text
    assert metrics.index_load_failures.labels("m")._value.get() == 1
    _build(root / "m", 14)  # the next good build is taken
    indexes.refresh()
    assert _size(indexes) == 14


class _RecordingBackend(FaissBackend):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_closing_the_index_set_closes_its_backend(tmp_path):
    """The Milvus backend holds the connection every store shares: the gateway's stop must close it."""
    _build(tmp_path / "m", 10)
    backend = _RecordingBackend(tmp_path)
    indexes = IndexSet(backend, {"m": FakeModel()})
    indexes.close()
    assert backend.closed and not indexes.has("m")


def test_an_index_of_another_export_is_refused_naming_both(tmp_path):
    _build(tmp_path / "m", 10, export_sha256="b" * 64)
    indexes = IndexSet(FaissBackend(tmp_path), {"m": FakeModel()})
    with pytest.raises(IndexMismatchError, match=r"sha256 bbbbbbbbbbbb.*sha256 aaaaaaaaaaaa.*--model m"):
        indexes.index("m")


def test_an_index_without_checksums_is_refused(tmp_path):
    _build(tmp_path / "m", 10)
    manifest_path = tmp_path / "m" / faiss_files.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="older version"):
        IndexSet(FaissBackend(tmp_path), {"m": FakeModel()}).index("m")


def test_a_removed_index_is_no_longer_served(served):
    root, indexes, _ = served
    shutil.rmtree(root / "m")
    indexes.refresh()
    assert not indexes.has("m")
    with pytest.raises(IndexMissingError):
        indexes.index("m")


@pytest.mark.parametrize("name", [faiss_files.INDEX_FILE, "table/image_id.bytes"])
def test_a_file_truncated_in_place_is_refused_and_its_restoration_served_without_touching_the_manifest(
        served, name, caplog):
    root, indexes, metrics = served
    manifest = (root / "m" / faiss_files.MANIFEST_FILE).stat()
    target = root / "m" / name
    good = target.read_bytes()
    os.truncate(target, len(good) // 2)
    with caplog.at_level(logging.ERROR, logger="cxr.gateway.indexes"):
        indexes.refresh()
    assert "still serving the previous one" in caplog.text and target.name in caplog.text
    assert metrics.index_load_failures.labels("m")._value.get() == 1
    previous = indexes.index("m").store
    found = asyncio.run(indexes.index("m").search(np.full(DIM, DIM ** -0.5, np.float32), 10))
    assert sorted(row["image_id"] for _, _, row in found) == [str(i) for i in range(10)]  # its private copy, whole
    indexes.refresh()
    assert metrics.index_load_failures.labels("m")._value.get() == 1  # refused once, not every second

    target.write_bytes(good)  # `cp good index.faiss`: the same inode, rewritten
    indexes.refresh()
    assert indexes.index("m").store is not previous and _size(indexes) == 10
    after = (root / "m" / faiss_files.MANIFEST_FILE).stat()
    assert (after.st_mtime_ns, after.st_ino) == (manifest.st_mtime_ns, manifest.st_ino)


def test_the_version_covers_every_file_the_manifest_lists(tmp_path):
    _build(tmp_path / "m", 10)
    backend = FaissBackend(tmp_path)
    first = backend.version("m")
    assert backend.version("m") == first
    column = tmp_path / "m" / "table" / "labels.codes.npy"
    stamp = column.stat().st_mtime_ns + 1_000_000
    os.utime(column, ns=(stamp, stamp))
    assert backend.version("m") != first


@pytest.mark.parametrize("damage, says", [
    ("none", None),
    ("removed", "missing"),
    ("manifest", "corrupt (" ),
    ("export", "mismatched ("),
])
def test_problem_says_why_an_index_is_not_served(tmp_path, damage, says):
    _build(tmp_path / "m", 10, export_sha256="b" * 64 if damage == "export" else "a" * 64)
    if damage == "removed":
        shutil.rmtree(tmp_path / "m")
    if damage == "manifest":
        (tmp_path / "m" / faiss_files.MANIFEST_FILE).write_text("{not json")
    problem = IndexSet(FaissBackend(tmp_path), {"m": FakeModel()}).problem("m")
    assert problem == says if says in (None, "missing") else problem.startswith(says), problem
    assert problem is None or len(problem) <= 120


def _all_ids(indexes):
    store = indexes.index("m").store
    return {row["image_id"] for row in store.rows([i for i, _ in store.search(np.eye(DIM, dtype=np.float32), 50)[0]])}


def test_commits_are_taken_in_without_a_reload_and_a_compacted_build_keeps_them(served):
    root, indexes, metrics = served
    backend, store = FaissBackend(root), indexes.index("m").store
    backend.apply("m", Change(image_ids=("3",)))
    added = np.eye(DIM, dtype=np.float32)[:1]
    backend.apply("m", Change(added, ({"image_id": "new", "study_uid": "s"},), export_sha256="a" * 64))
    indexes.refresh()  # the health watcher's look: the build itself did not change
    assert indexes.index("m").store is store and _all_ids(indexes) == {str(i) for i in range(10)}
    indexes.take_in_commits()
    assert _all_ids(indexes) == {str(i) for i in range(10) if i != 3} | {"new"}
    assert metrics.index_vectors.labels("m")._value.get() == 10
    backend.compact("m")
    backend.apply("m", Change(image_ids=("4",)))
    indexes.take_in_commits()  # the store of the build compacted away still takes in new commits
    assert indexes.index("m").store is store and "4" not in _all_ids(indexes)
    indexes.refresh()
    assert indexes.index("m").store is not store
    assert _all_ids(indexes) == {str(i) for i in range(10) if i not in (3, 4)} | {"new"}


def test_the_watcher_takes_in_commits_by_itself(served):
    root, indexes, _ = served
    indexes.changes_poll_s = 0.01
    indexes.start()
    try:
        FaissBackend(root).apply("m", Change(image_ids=("5",)))
        deadline = time.monotonic() + 5
        while "5" in _all_ids(indexes):
            assert time.monotonic() < deadline, "the deletion was not taken in"
            time.sleep(0.01)
    finally:
        indexes.close()
