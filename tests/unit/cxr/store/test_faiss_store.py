"""The FAISS store: files replaced whole, foreign indexes refused, every index type searched with
filters, batches, re-ranking and chunked writes giving what exact search gives."""

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cxr import private_copy
from cxr.store import faiss_files, faiss_store, faiss_writer, index_types
from cxr.store.errors import IndexCorruptError, IndexMismatchError, IndexUnreadableError, UnknownFilterError
from cxr.store.interface import Filter
from support import index_metadata, unit_vectors

REPO = Path(__file__).resolve().parents[4]


def _store(tmp_path, vectors, index_type="flat", rerank=False, metadata=None):
    faiss_writer.write(tmp_path / "idx", vectors, metadata or index_metadata(len(vectors)), {"model": "m"}, [],
                      index_type, rerank=rerank)
    return faiss_store.load(tmp_path / "idx", "m", vectors.shape[1])


def _exact(vectors, query, allowed, k=10):
    return sorted(allowed, key=lambda i: -float(vectors[i] @ query))[:k]


def test_a_new_index_replaces_the_old_one_whole(tmp_path):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    faiss_writer.write(tmp_path / "idx", unit_vectors(40, seed=1), index_metadata(40), {"model": "m"},
                      [("x.png", "empty")], "hnsw")
    store = faiss_store.load(tmp_path / "idx")
    assert (store.index.ntotal, store.count, store.index_type) == (40, 40, "hnsw")
    assert store.manifest["skipped"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_an_index_of_another_model_or_dimension_is_refused_naming_both(tmp_path):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "siglip"}, [], "flat")
    with pytest.raises(IndexMismatchError, match=r"siglip \(24-d\).*medsiglip \(1152-d\).*--model medsiglip"):
        faiss_store.load(tmp_path / "idx", model="medsiglip", dim=1152)


def test_an_index_in_the_old_jsonl_format_is_refused_with_the_remedy(tmp_path):
    _store(tmp_path, unit_vectors(30))
    manifest_path = tmp_path / "idx" / faiss_files.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {"index.faiss": manifest["files"]["index.faiss"], "metadata.jsonl": {}}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="older version.*cxr index build"):
        faiss_store.load(tmp_path / "idx")


@pytest.mark.parametrize("index_type", index_types.INDEX_TYPES)
def test_filtered_search_returns_only_allowed_ids_and_exact_ones_for_flat(tmp_path, index_type):
    vectors = unit_vectors(600)
    store = _store(tmp_path, vectors, index_type)
    query = vectors[7]
    allowed = [i for i in range(len(vectors)) if i % 2 == 1 and i % 3 == 2]  # Lateral and Mass
    (hits,) = store.search(query[np.newaxis], 10, Filter.of(["lateral"], ["Mass"]))
    ids = [i for i, _ in hits]
    assert len(ids) == 10 and set(ids) <= set(allowed)
    if index_type == "flat":
        assert ids == _exact(vectors, query, allowed)
    if index_type not in index_types.COMPRESSED:  # 3 bytes of PQ code for 24-d noise cannot promise that
        assert store.search(query[np.newaxis], 1)[0][0][0] == 7


def test_filters_or_within_a_kind_and_and_across_kinds_ignoring_case(tmp_path):
    vectors = unit_vectors(60)
    store = _store(tmp_path, vectors)
    (hits,) = store.search(vectors[:1], 60, Filter.of(["FRONTAL"], ["effusion", "mass"]))
    assert sorted(i for i, _ in hits) == [i for i in range(60) if i % 2 == 0 and i % 3 in (0, 2)]


def test_a_narrow_filter_on_ivf_still_finds_k_matches(tmp_path):
    vectors = unit_vectors(4000, dim=16)
    metadata = [dict(row, labels=["Hernia"] if i % 500 == 3 else row["labels"])
                for i, row in enumerate(index_metadata(4000))]
    store = _store(tmp_path, vectors, "ivf", metadata=metadata)
    rare = [i for i in range(4000) if i % 500 == 3]
    (hits,) = store.search(vectors[:1], 8, Filter.of(labels=["Hernia"]))
    assert sorted(i for i, _ in hits) == rare  # 8 images in a few of 63 lists; nprobe alone would miss some


def test_a_batch_answers_as_single_queries_do(tmp_path):
    vectors = unit_vectors(500)
    store = _store(tmp_path, vectors, "ivf")
    batched = store.search(vectors[:20], 5, Filter.of(labels=["Effusion"]))
    singles = [store.search(v[np.newaxis], 5, Filter.of(labels=["Effusion"]))[0] for v in vectors[:20]]
    assert [[i for i, _ in h] for h in batched] == [[i for i, _ in h] for h in singles]


def test_top_k_larger_than_the_allowed_images_returns_them_all(tmp_path):
    vectors = unit_vectors(20)
    store = _store(tmp_path, vectors)
    assert len(store.search(vectors[:1], 1000)[0]) == 20
    assert len(store.search(vectors[:1], 1000, Filter.of(labels=["Mass"]))[0]) == 6


def test_unknown_filter_lists_the_known_values(tmp_path):
    store = _store(tmp_path, unit_vectors(30))
    with pytest.raises(UnknownFilterError, match=r"position 1 .*\['Effusion', 'Mass', 'No Finding'\]") as error:
        store.check_filter(Filter.of(labels=["Pneumonia"]))
    assert "Pneumonia" not in str(error.value)  # a value typed into a filter may be a patient's name


def test_rerank_scores_candidates_with_the_full_vectors(tmp_path):
    vectors = unit_vectors(3000, dim=32)
    plain, reranked = _store(tmp_path / "a", vectors, "ivfpq"), _store(tmp_path / "b", vectors, "ivfpq", rerank=True)
    queries = unit_vectors(40, dim=32, seed=5)
    truth = [_exact(vectors, q, range(3000)) for q in queries]

    def recall(store):
        found = store.search(queries, 10)
        return np.mean([len({i for i, _ in f} & set(t)) / 10 for f, t in zip(found, truth)])

    (hits,) = reranked.search(queries[:1], 10)
    np.testing.assert_allclose([s for _, s in hits], [float(vectors[i] @ queries[0]) for i, _ in hits], atol=2e-3)
    assert recall(reranked) > recall(plain)


def test_a_chunked_write_equals_a_whole_one(tmp_path):
    vectors, metadata = unit_vectors(900), index_metadata(900)
    whole = _store(tmp_path / "whole", vectors, "sq8")
    with faiss_writer.FaissWriter(tmp_path / "chunked", 24, 900, "sq8", {"model": "m"}) as writer:
        writer.train(vectors)
        for start in range(0, 900, 250):
            writer.add(vectors[start:start + 250], metadata[start:start + 250])
        writer.finish()
    chunked = faiss_store.load(tmp_path / "chunked")
    assert chunked.rows(range(900)) == whole.rows(range(900))
    assert [[i for i, _ in h] for h in chunked.search(vectors[:5], 5)] == \
        [[i for i, _ in h] for h in whole.search(vectors[:5], 5)]


def test_only_small_indexes_are_searched_inline(tmp_path):
    for n, inline in ((4096, True), (4097, False)):  # 256-d: 2^20 floats is the line
        faiss_writer.write(tmp_path / str(n), unit_vectors(n, 256), index_metadata(n), {"model": "m"}, [], "flat")
        assert faiss_store.load(tmp_path / str(n)).inline_search is inline


def test_opaque_ids_are_stable_across_loads_and_rebuilds_and_differ_between_indexes(tmp_path):
    _store(tmp_path, unit_vectors(30))
    first = faiss_store.load(tmp_path / "idx").opaque_id("00000001_000.png")
    assert len(first) == 24 and "00000001" not in first
    assert faiss_store.load(tmp_path / "idx").opaque_id("00000001_000.png") == first
    faiss_writer.write(tmp_path / "idx", unit_vectors(40, seed=1), index_metadata(40), {"model": "m"}, [], "flat")
    assert faiss_store.load(tmp_path / "idx").opaque_id("00000001_000.png") == first  # the key is carried over
    faiss_writer.write(tmp_path / "other", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    assert faiss_store.load(tmp_path / "other").opaque_id("00000001_000.png") != first
    assert faiss_store.load(tmp_path / "other").opaque_id("") == ""


# A child process loads an index, has one of its files truncated in place (what `truncate -s` or a
# careless copy does to a served index) and searches: a mapped file that shrank kills it with SIGBUS.
TRUNCATED_READER = """
import os, sys
from pathlib import Path
import numpy as np
from cxr.store import faiss_store
directory, name = Path(sys.argv[1]), sys.argv[2]
store = faiss_store.load(directory)
os.truncate(directory / name, 0)
(hits,) = store.search(np.full((1, 24), 24 ** -0.5, np.float32), 20)
rows = store.rows([i for i, _ in hits]) + store.rows(range(store.count))
print(len(hits), len(rows), rows[-1]["image_id"])
"""


@pytest.mark.parametrize("name", [faiss_files.INDEX_FILE, "table/image_id.bytes", "table/image_id.offsets.npy",
                                  faiss_files.VECTORS_FILE])
def test_a_file_truncated_under_a_loaded_store_does_not_crash_its_reader(tmp_path, name):
    faiss_writer.write(tmp_path / "idx", unit_vectors(3000), index_metadata(3000), {"model": "m"}, [], "flat",
                      rerank=True)
    child = subprocess.run([sys.executable, "-c", TRUNCATED_READER, str(tmp_path / "idx"), name],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert child.stdout.split() == ["20", "3020", "2999"]


def _mapped_paths() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


def test_a_loaded_store_maps_a_private_copy_removed_from_disk(tmp_path):
    store = _store(tmp_path, unit_vectors(300), rerank=True)
    mapped = _mapped_paths()
    assert not [path for path in mapped if path.startswith(str(tmp_path / "idx"))]
    copies = [path for path in mapped if "cxr-serving" in path]
    assert copies and all(path.endswith("(deleted)") for path in copies)  # unlinked: nothing left to clean up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert len(store.search(unit_vectors(1, seed=3), 5)[0]) == 5


def test_what_is_verified_is_the_copy_that_is_served(tmp_path, monkeypatch):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    copy_file = private_copy.copy_file

    def damaging(source, target):  # the original changes between its copy and the check: too late
        copy_file(source, target)
        if target.name == faiss_files.INDEX_FILE:
            with target.open("r+b") as f:
                f.seek(-1, 2)
                f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    monkeypatch.setattr(private_copy, "copy_file", damaging)
    with pytest.raises(IndexCorruptError, match="index.faiss is .* the manifest says"):
        faiss_store.load(tmp_path / "idx")


def test_leftover_copies_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = tmp_path / f".cxr-serving-{host}-{ended.stdout.strip()}-idx-abc123"
    live = tmp_path / f".cxr-serving-{host}-{os.getppid()}-idx-def456"
    other_host = tmp_path / f".cxr-serving-elsewhere.example-{ended.stdout.strip()}-idx-ghi789"
    for folder in (dead, live, other_host):
        (folder / "table").mkdir(parents=True)
        (folder / faiss_files.INDEX_FILE).write_bytes(b"x")
    faiss_store.load(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", live.name, other_host.name])


def test_a_read_only_index_folder_is_copied_to_the_temp_dir_saying_so(tmp_path, monkeypatch, caplog):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    mkdtemp = tempfile.mkdtemp

    def read_only(prefix, dir):  # noqa: A002 - tempfile's own name
        if Path(dir) == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkdtemp(prefix=prefix, dir=dir)
    monkeypatch.setattr(private_copy.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    with caplog.at_level(logging.INFO, logger="cxr.private_copy"):
        store = faiss_store.load(tmp_path / "idx")
    assert store.count == 30 and list((tmp_path / "temp").iterdir()) == []
    assert any(path.startswith(str(tmp_path / "temp" / ".cxr-serving")) for path in _mapped_paths())
    lines = [r.getMessage() for r in caplog.records if r.name == "cxr.private_copy"]
    assert len(lines) == 1 and str(tmp_path / "temp") in lines[0] and "index_copy_dir" in lines[0], lines


def test_index_copy_dir_says_where_copies_go(tmp_path):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    store = faiss_store.load(tmp_path / "idx", copy_dir=tmp_path / "copies")
    assert any(path.startswith(str(tmp_path / "copies" / ".cxr-serving")) for path in _mapped_paths())
    assert list((tmp_path / "copies").iterdir()) == [] and store.count == 30


def test_no_room_for_the_copy_is_refused_before_copying_naming_the_setting(tmp_path, monkeypatch):
    faiss_writer.write(tmp_path / "idx", unit_vectors(30), index_metadata(30), {"model": "m"}, [], "flat")
    monkeypatch.setattr(private_copy.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 10**6))
    with pytest.raises(IndexUnreadableError, match=r"has 1 MB free.*index_copy_dir \(CXR_INDEX_COPY_DIR\)"):
        faiss_store.load(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
