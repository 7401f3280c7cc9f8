"""Commits to a Milvus index in service, on Milvus Lite: images added, replaced and deleted by image and
by study are seen by the next search of another connection (as a gateway in another process would see
the follower's), with exact counts; a store refreshed shows the new labels and the live count; a change
of another export or dimension is refused with nothing written; pending rows and compaction."""

import logging

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="these tests run Milvus Lite (pip install milvus-lite)")

from cxr.store.errors import IndexCorruptError, IndexMismatchError, IndexMissingError  # noqa: E402
from cxr.store.interface import Change, Committed, Filter  # noqa: E402
from cxr.store.milvus.aliases import COMMITTING, collection_manifest, write_manifest  # noqa: E402
from cxr.store.milvus.backend import MilvusBackend  # noqa: E402
from cxr.store.milvus.records import KEY_BASE, MilvusLimitError, image_key  # noqa: E402
from support import MilvusLiteFile, index_metadata, unit_vectors  # noqa: E402

MODEL = "m-1"
N, DIM = 60, 24
EXPORT = "abc123"


@pytest.fixture
def lite(tmp_path):
    """The follower's backend, with an index of N images in service (studies s0..s29 of two images)."""
    with MilvusLiteFile(tmp_path / "milvus.db", drop_grace_s=0) as backend:
        backend.write(MODEL, unit_vectors(N, DIM), index_metadata(N), {"model": MODEL, "export_sha256": EXPORT}, [],
                      "flat")
        yield backend


@pytest.fixture
def gateway(tmp_path, lite):
    """Another connection to the same Milvus: what a gateway reads through."""
    backend = MilvusBackend(str(tmp_path / "milvus.db"))
    yield backend
    backend.close()


def _rows(*image_ids, study="new", labels=("Pneumothorax",), projection="Frontal") -> tuple[dict, ...]:
    return tuple({"image_id": i, "study_uid": study, "labels": list(labels), "projection": projection,
                  "filename": f"{i}.png"} for i in image_ids)


def _change(vectors, rows, **fields) -> Change:
    return Change(vectors=vectors, rows=rows, export_sha256=EXPORT, **fields)


def _found(store, vectors, k=N + 10) -> list[set[str]]:
    """The image ids each query finds among its top k."""
    return [{row["image_id"] for row in store.rows([i for i, _ in hits])} for hits in store.search(vectors, k)]


def _image_rows(backend, image_id: str) -> int:
    collection = backend.version(MODEL)
    return len(backend.connection.call(lambda c: c.query(collection, filter=f'image_id == "{image_id}"',
                                                         output_fields=["id"], consistency_level="Strong")))


def test_added_images_are_found_by_the_next_search_of_another_connection(lite, gateway):
    store = gateway.open(MODEL)
    vectors = unit_vectors(3, DIM, seed=11)
    committed = lite.apply(MODEL, _change(vectors, _rows("a", "b", "c")))
    assert committed == Committed(generation=1, added=3, replaced=0, deleted=0)
    hits = store.search(vectors, 1)  # not refreshed: Milvus serves the rows, the manifest only counts them
    assert [hits[i][0][0] for i in range(3)] == [image_key(i) for i in "abc"]
    assert [row["image_id"] for row in store.rows([h[0][0] for h in hits])] == ["a", "b", "c"]
    assert [score for h in hits for _, score in h] == pytest.approx([1.0] * 3, abs=1e-5)
    assert store.image("b")["filename"] == "b.png" and len(store.study("new")) == 3


def test_adding_an_image_again_replaces_it_with_its_new_vector(lite, gateway):
    first, second = unit_vectors(2, DIM, seed=12)
    assert lite.apply(MODEL, _change(first[None], _rows("a"))) == Committed(1, added=1)
    assert lite.apply(MODEL, _change(second[None], _rows("a", labels=["Edema"]))) == Committed(2, replaced=1)
    store = gateway.open(MODEL)
    assert _image_rows(gateway, "a") == 1 and store.count == N + 1
    assert store.search(second[None], 1)[0][0] == (image_key("a"), pytest.approx(1.0, abs=1e-5))
    assert "a" in _found(store, first[None])[0]  # still there, once, but no longer at the old vector
    assert store.search(first[None], 1)[0][0][1] < 0.99
    assert store.image("a")["labels"] == ["Edema"]


def test_replacing_an_image_of_the_build_drops_its_row_of_the_build(lite, gateway):
    store = gateway.open(MODEL)
    vector = unit_vectors(1, DIM, seed=13)
    assert lite.apply(MODEL, _change(vector, _rows("7", study="s3"))) == Committed(1, replaced=1)
    assert _image_rows(gateway, "7") == 1
    assert store.search(vector, 1)[0][0][0] == image_key("7") >= KEY_BASE
    assert store.refresh() and store.count == N
    assert store.study("s3") == [store.image("6"), store.image("7")] and store.image("7")["labels"] == ["Pneumothorax"]


def test_a_change_adding_one_image_twice_keeps_the_last(lite, gateway):
    vectors = unit_vectors(2, DIM, seed=14)
    committed = lite.apply(MODEL, _change(vectors, _rows("a", "a")[:1] + _rows("a", labels=["Mass"])))
    assert committed == Committed(1, added=1)
    store = gateway.open(MODEL)
    assert _image_rows(gateway, "a") == 1 and store.image("a")["labels"] == ["Mass"]
    assert store.search(vectors[1:], 1)[0][0][0] == image_key("a")


def test_deleted_images_and_studies_are_never_found_by_the_next_search(lite, gateway):
    store = gateway.open(MODEL)
    vectors = unit_vectors(N, DIM)  # the build's own vectors: each finds itself first
    assert all(str(i) in found for i, found in enumerate(_found(store, vectors[:8])))
    committed = lite.apply(MODEL, Change(image_ids=("1", "2", "nope"), study_uids=("s2", "s9", "s-none")))
    assert committed == Committed(1, deleted=2 + 4)  # images 1 and 2; studies s2 (4, 5) and s9 (18, 19)
    gone = {"1", "2", "4", "5", "18", "19"}
    for found in _found(store, vectors):
        assert not found & gone and len(found) == N - 6
    assert store.study("s2") == [] and store.image("1") is None and len(store.study("s1")) == 1
    assert store.refresh() and store.count == N - 6
    assert gateway.open(MODEL).count == N - 6


def test_one_commit_deletes_then_adds_and_counts_each_exactly(lite, gateway):
    lite.apply(MODEL, _change(unit_vectors(2, DIM, seed=15), _rows("a", "b", study="sx")))
    vectors = unit_vectors(4, DIM, seed=16)
    change = _change(vectors, _rows("a", "3", "c", "10"), image_ids=("b", "10"), study_uids=("s0",))
    # deleted: b, 10 (by id), 0 and 1 (study s0); then added: c, and 10 again; replaced: a (added before), 3 (built)
    assert lite.apply(MODEL, change) == Committed(2, added=2, replaced=2, deleted=4)
    store = gateway.open(MODEL)
    assert store.count == N + 2 - 4 + 2 == len(_found(store, vectors[:1])[0])
    assert [_image_rows(gateway, i) for i in ("a", "b", "c", "3", "10", "0", "1")] == [1, 0, 1, 1, 1, 0, 0]
    assert [store.search(vectors, 1)[i][0][0] for i in range(4)] == [image_key(i) for i in ("a", "3", "c", "10")]


def test_a_refreshed_store_shows_new_labels_projections_and_the_live_count(lite, gateway):
    store = gateway.open(MODEL)
    assert not store.refresh()
    new = Filter.of(labels=["pneumothorax"], projections=["oblique"])
    assert "Pneumothorax" not in store.labels
    vectors = unit_vectors(2, DIM, seed=17)
    lite.apply(MODEL, _change(vectors, _rows("a", "b", projection="Oblique"), study_uids=("s0", "s1")))
    assert store.refresh() and not store.refresh()
    assert "Pneumothorax" in store.labels and "Oblique" in store.projections
    assert store.count == N - 4 + 2 and store.manifest["generation"] == 1
    hits = store.search(vectors, 5, new)
    assert [sorted(i for i, _ in h) for h in hits] == [sorted([image_key("a"), image_key("b")])] * 2


@pytest.mark.parametrize("change, message", [
    (Change(vectors=unit_vectors(2, 16), rows=_rows("a", "b"), export_sha256=EXPORT, image_ids=("1",)),
     r"vectors of shape \(2, 16\) to an index of 24-d vectors"),
    (Change(vectors=unit_vectors(2, DIM), rows=_rows("a", "b"), export_sha256="fedcba987654", study_uids=("s1",)),
     r"export sha256 fedcba987654… to an index built with export sha256 abc123…"),
    (Change(vectors=unit_vectors(2, DIM), rows=_rows("a", "b"), image_ids=("1",)), r"export sha256 \(none\)"),
], ids=["dimension", "export", "no export"])
def test_vectors_of_another_dimension_or_export_are_refused_with_nothing_written(lite, gateway, change, message):
    store = gateway.open(MODEL)
    before = collection_manifest(lite.connection, lite.version(MODEL))
    with pytest.raises(IndexMismatchError, match=message) as refused:
        lite.apply(MODEL, change)
    assert "rebuild the index with `cxr index build --model m-1" in str(refused.value)
    assert collection_manifest(lite.connection, lite.version(MODEL)) == before
    assert not store.refresh() and store.count == N and store.image("1") and len(store.study("s1")) == 2
    assert all(len(found) == N for found in _found(store, unit_vectors(2, DIM, seed=18)))


def test_a_row_too_long_for_milvus_is_refused_with_nothing_written(lite, gateway):
    rows = _rows("a", "b")
    rows[1]["path"] = "/x" * 3000
    with pytest.raises(MilvusLimitError, match=r"row 1 of the change \('b'\) has path of 6000 bytes"):
        lite.apply(MODEL, _change(unit_vectors(2, DIM), rows, image_ids=("1",)))
    store = gateway.open(MODEL)
    assert store.image("1") and store.image("a") is None and store.manifest.get("generation", 0) == 0


def test_pending_rows_until_compacted(lite, gateway):
    assert lite.pending(MODEL) == 0 and lite.compact(MODEL) is None
    lite.apply(MODEL, _change(unit_vectors(3, DIM, seed=19), _rows("a", "b", "5", study="s2")))
    lite.apply(MODEL, Change(study_uids=("s7",)))
    assert lite.pending(MODEL) == 3 + 1 + 2  # added a, b, 5; 5's row of the build deleted; study s7's two
    store = gateway.open(MODEL)
    before = store.search(unit_vectors(5, DIM, seed=20), 10)
    manifest = lite.compact(MODEL)
    assert manifest["rows_added"] == manifest["rows_deleted"] == 0 and manifest["generation"] == 2
    assert lite.pending(MODEL) == 0 and lite.compact(MODEL) is None
    assert store.search(unit_vectors(5, DIM, seed=20), 10) == before and gateway.open(MODEL).count == N + 2 - 2
    lite.apply(MODEL, Change(image_ids=("a",)))
    assert lite.pending(MODEL) == 1


def test_generations_count_up_from_one_and_start_again_with_a_rebuild(lite, gateway):
    for generation in (1, 2, 3):
        assert lite.apply(MODEL, Change(image_ids=(str(generation),))).generation == generation
    assert lite.apply(MODEL, Change()) == Committed(3)  # an empty change commits nothing
    assert lite.apply(MODEL, Change(image_ids=("1",), study_uids=("nope",))) == Committed(3)  # nor one finding nothing
    assert COMMITTING not in collection_manifest(lite.connection, lite.version(MODEL))
    lite.write(MODEL, unit_vectors(5, DIM), index_metadata(5), {"model": MODEL, "export_sha256": EXPORT}, [], "flat")
    assert lite.apply(MODEL, Change(image_ids=("1",))) == Committed(1, deleted=1)
    assert gateway.open(MODEL).count == 4


def test_a_commit_cut_short_is_served_with_the_rows_there_and_completed_by_its_retry(lite, gateway, caplog):
    collection = lite.version(MODEL)
    manifest = collection_manifest(lite.connection, collection)
    # What a commit leaves when Milvus goes away after its deletes: its mark, rows gone, no new manifest.
    write_manifest(lite.connection, collection, dict(manifest, **{COMMITTING: 1}))
    lite.connection.call(lambda c: c.delete(collection, filter='study_uid in ["s0"]'))
    with caplog.at_level(logging.WARNING, "cxr.milvus_store"):
        store = gateway.open(MODEL)
    assert store.count == N - 2 and "commit 1" in caplog.text
    vectors = unit_vectors(1, DIM, seed=21)
    assert lite.apply(MODEL, _change(vectors, _rows("a"), study_uids=("s0",))) == Committed(1, added=1)
    assert store.refresh() and store.count == N - 1 and COMMITTING not in store.manifest
    assert gateway.open(MODEL).count == N - 1


def test_rows_missing_without_a_commit_are_a_corrupt_index(lite, gateway):
    collection = lite.version(MODEL)
    lite.connection.call(lambda c: c.delete(collection, filter='image_id in ["3"]'))
    with pytest.raises(IndexCorruptError, match=f"holds {N - 1} rows; its manifest says {N}"):
        gateway.open(MODEL)


def test_a_row_deleted_between_search_and_read_asks_for_a_retry(lite, gateway):
    from cxr.store.errors import StoreUnavailableError

    store = gateway.open(MODEL)
    hits = store.search(unit_vectors(1, DIM, seed=3), 3)
    image_ids = [row["image_id"] for row in store.rows([i for i, _ in hits[0]])]
    lite.apply(MODEL, Change(image_ids=tuple(image_ids[:1])))
    with pytest.raises(StoreUnavailableError, match="deleted .* by a commit since the search that found them: retry"):
        store.rows([i for i, _ in hits[0]])


def test_a_model_without_an_index_has_nothing_to_change(tmp_path):
    with MilvusLiteFile(tmp_path / "empty.db") as backend:
        for call in (lambda: backend.apply(MODEL, Change(image_ids=("1",))), lambda: backend.pending(MODEL),
                     lambda: backend.compact(MODEL)):
            with pytest.raises(IndexMissingError, match=f"no index of {MODEL}"):
                call()


def test_ids_of_images_added_are_their_keys_and_never_a_build_position(lite):
    lite.apply(MODEL, _change(unit_vectors(1, DIM, seed=22), _rows(str(N + 1))))
    store = lite.open(MODEL)
    assert store.search(unit_vectors(1, DIM, seed=22), 1)[0][0][0] == image_key(str(N + 1))
    assert np.int64(image_key(str(N + 1))) >= KEY_BASE > N


CALIBRATION = {"format": 1, "k": 5, "weighting": "similarity", "fitted": {"queries": 9},
               "labels": {"Pneumothorax": {"method": "isotonic", "x": [0.0, 1.0], "y": [0.05, 0.6]}}}


def test_a_calibration_is_seen_by_another_connection_and_kept_through_commits_and_compaction(lite, gateway):
    store = gateway.open(MODEL)
    assert store.calibration is None
    lite.set_calibration(MODEL, CALIBRATION)
    assert store.refresh() and store.calibration.to_dict() == CALIBRATION
    lite.apply(MODEL, _change(unit_vectors(2, DIM, seed=5), _rows("a", "b")))
    lite.compact(MODEL)
    assert collection_manifest(lite.connection, lite.version(MODEL))["calibration"] == CALIBRATION
    assert gateway.open(MODEL).calibration.k == 5
    lite.set_calibration(MODEL, None)
    assert store.refresh() and store.calibration is None
    lite.set_calibration(MODEL, CALIBRATION)
    lite.write(MODEL, unit_vectors(N, DIM), index_metadata(N), {"model": MODEL, "export_sha256": EXPORT}, [], "flat")
    assert gateway.open(MODEL).calibration is None  # a new build: calibrate it again
