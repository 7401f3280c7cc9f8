"""Commits to a FAISS index in service (FaissBackend.apply, refresh, compact): after any sequence of adds,
replacements and deletions, a store answers exactly as a brute-force search over the images there now,
before and after compaction, and a crash at any step leaves the last committed generation."""

import errno
import json
import os

import numpy as np
import pytest

from cxr.store import faiss_backend, faiss_changes, faiss_compaction
from cxr.store.errors import IndexMismatchError, IndexMissingError, IndexReadOnlyError, UnknownFilterError
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change, Committed, Filter
from support import index_metadata, unit_vectors

MODEL, DIM, N = "m", 16, 60


class Archive:
    """What the index should hold: image id -> (vector, row)."""

    def __init__(self, backend: FaissBackend, index_type: str = "flat"):
        self.backend = backend
        vectors, rows = unit_vectors(N, DIM), index_metadata(N)
        for i, row in enumerate(rows):  # patients of six images, a study date for all but every fifth
            row.update(patient_id=f"p{i // 6}", study_date="" if i % 5 == 0 else f"2020{1 + i % 12:02d}15",
                       study_instance_uid=f"1.2.{i // 2}")
        self.images = {row["image_id"]: (v, row) for v, row in zip(vectors, rows)}
        backend.write(MODEL, vectors, rows, {"model": MODEL, "dim": DIM, "export_sha256": "e1"}, [], index_type)
        self.seed = 100

    def add(self, image_ids, study="new") -> Committed:
        self.seed += 1
        vectors = unit_vectors(len(image_ids), DIM, seed=self.seed)
        rows = [{"image_id": i, "study_uid": study, "projection": "Frontal", "labels": ["Nodule"], "patient_id": "p1",
                 "study_date": "20200301"} for i in image_ids]
        self.images.update({row["image_id"]: (v, row) for v, row in zip(vectors, rows)})
        return self.backend.apply(MODEL, Change(vectors, tuple(rows), export_sha256="e1"))

    def delete(self, image_ids=(), studies=()) -> Committed:
        for image_id, (_, row) in list(self.images.items()):
            if image_id in image_ids or row["study_uid"] in studies:
                del self.images[image_id]
        return self.backend.apply(MODEL, Change(image_ids=tuple(image_ids), study_uids=tuple(studies)))

    def expected(self, query: np.ndarray, k: int, flt: Filter = Filter()) -> list[str]:
        def passes(row):
            return ((not flt.projections or row["projection"] in flt.projections)
                    and (not flt.labels or set(flt.labels) & set(row["labels"]))
                    and flt.passes_date(row.get("study_date", "")) and not flt.excluded(row))
        scored = sorted(((float(v @ query), i) for i, (v, row) in self.images.items() if passes(row)), reverse=True)
        return [i for _, i in scored[:k]]

    def check(self, store, flt: Filter = Filter(), exact: bool = True) -> None:
        assert store.count == len(self.images)
        queries = unit_vectors(8, DIM, seed=7)
        for query, hits in zip(queries, store.search(queries, 10, flt)):
            found = [row["image_id"] for row in store.rows([i for i, _ in hits])]
            assert set(found) <= set(self.images)
            if exact:
                assert found == self.expected(query, 10, flt)
        for image_id, (vector, _) in self.images.items():
            assert store.image(image_id)["image_id"] == image_id


@pytest.fixture
def backend(tmp_path):
    return FaissBackend(tmp_path / "indexes")


def test_a_refreshed_store_answers_as_a_search_of_the_images_there_now(backend):
    archive = Archive(backend)
    store = backend.open(MODEL)
    assert archive.add(["n1", "n2", "n3"]) == Committed(1, added=3)
    assert archive.add(["n3", "4"]) == Committed(2, added=0, replaced=2)  # a build row and a commit's row
    assert archive.delete(image_ids=["5", "n1", "absent"]) == Committed(3, deleted=2)
    assert archive.delete(studies=["s7", "new"]) == Committed(4, deleted=5)  # s7: 14, 15; new: n2, n3 and 4
    assert store.refresh() and not store.refresh()
    for flt in (Filter(), Filter.of(labels=["Mass"]), Filter.of(projections=["Lateral"], labels=["Effusion"])):
        archive.check(store, flt)
    assert store.image("5") is None and store.study("s7") == [] and store.study("new") == []
    assert [r["image_id"] for r in store.study("s2")] == []  # 4 moved to the study "new", 5 deleted


def test_dates_and_exclusions_filter_the_build_and_the_added_rows_alike(backend):
    archive = Archive(backend)
    archive.add(["n1", "n2"])  # of patient p1, dated 20200301
    store = backend.open(MODEL)
    for flt in (Filter.of(exclude_patients=["p1"]), Filter.of(exclude_patients=["p0", "p2"], exclude_studies=["s9"]),
                Filter.of(exclude_studies=["1.2.4", "1.2.5", "s7"]),
                Filter.of(date_from="20200301", date_to="20200630"), Filter.of(date_to="20200215"),
                Filter.of(labels=["Mass"], date_from="20200301", exclude_patients=["p3"])):
        archive.check(store, flt)
    hits = store.search(unit_vectors(4, DIM, seed=3), 60, Filter.of(exclude_patients=["p1"]))
    assert all(row["patient_id"] != "p1" for found in hits for row in store.rows([i for i, _ in found]))
    assert "p1" not in repr(Filter.of(exclude_patients=["p1"]))


def test_labels_of_added_images_filter_and_unknown_ones_are_refused(backend):
    archive = Archive(backend)
    archive.add(["n1", "n2"])
    store = backend.open(MODEL)  # a store opened after commits takes them in at once
    assert "Nodule" in store.labels
    archive.check(store, Filter.of(labels=["Nodule"]))
    with pytest.raises(UnknownFilterError):
        store.search(unit_vectors(1, DIM), 5, Filter.of(labels=["Pneumothorax"]))


def test_adding_an_image_twice_leaves_it_once_with_its_last_vector(backend):
    archive = Archive(backend)
    archive.add(["n1"])
    archive.add(["n1"])
    store = backend.open(MODEL)
    vector = archive.images["n1"][0]
    (top, _), = store.search(vector[None], 1)[0]
    assert store.rows([top])[0]["image_id"] == "n1" and store.count == N + 1
    archive.check(store)


def _failing(number: int):
    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))
    return fail


@pytest.mark.parametrize("refusal", [errno.EROFS, errno.EACCES])
def test_a_commit_to_an_index_this_process_cannot_write_says_where_to_delete(backend, monkeypatch, refusal):
    """A gateway serving a read-only mount (docker-compose.yml, deploy/k8s) is asked for a deletion."""
    archive = Archive(backend)
    store = backend.open(MODEL)
    monkeypatch.setattr(faiss_backend, "write_deletion", _failing(refusal))
    with pytest.raises(IndexReadOnlyError, match="cxr index delete") as raised:
        backend.apply(MODEL, Change(image_ids=("5",)))
    assert str(backend.path(MODEL)) in str(raised.value) and os.strerror(refusal) in str(raised.value)
    monkeypatch.setattr(faiss_backend, "write_deletion", _failing(errno.ENOSPC))
    with pytest.raises(OSError) as full:  # not a refusal to write at all: left as it is
        backend.apply(MODEL, Change(image_ids=("5",)))
    assert full.value.errno == errno.ENOSPC and not isinstance(full.value, IndexReadOnlyError)
    assert not store.refresh() and store.image("5") is not None
    archive.check(store)


def test_a_change_of_another_export_or_dimension_is_refused_with_nothing_written(backend, tmp_path):
    Archive(backend)
    row = ({"image_id": "x", "study_uid": "s"},)
    with pytest.raises(IndexMismatchError):
        backend.apply(MODEL, Change(unit_vectors(1, DIM), row, export_sha256="other"))
    with pytest.raises(IndexMismatchError):
        backend.apply(MODEL, Change(unit_vectors(1, DIM + 1), row, export_sha256="e1"))
    with pytest.raises(IndexMissingError):
        backend.apply("absent", Change(image_ids=("1",)))
    assert faiss_changes.read_generation(backend.path(MODEL)) is None


@pytest.mark.parametrize("index_type", ["flat", "ivf", "sq8", "hnsw"])
def test_compaction_folds_every_commit_into_a_new_build(backend, index_type):
    archive = Archive(backend, index_type)
    archive.add([f"n{i}" for i in range(10)])
    archive.delete(image_ids=["3", "n4"], studies=["s9"])
    archive.add(["n5", "7"])
    assert backend.pending(MODEL) == 10 + 4 + 2 + 2  # rows added and removed (the replaced ones too)
    manifest = backend.compact(MODEL)
    assert manifest["count"] == len(archive.images) and backend.pending(MODEL) == 0
    assert backend.compact(MODEL) is None  # nothing left to fold
    store = backend.open(MODEL)
    assert store.delta.empty and store.count == len(archive.images)
    archive.check(store, exact=index_type == "flat")
    for image_id, (vector, _) in archive.images.items():  # each image is its own nearest neighbour
        top = store.search(vector[None], 1)[0][0][0]
        assert store.rows([top])[0]["image_id"] == image_id, index_type


def test_commits_made_while_compacting_are_carried_over(backend, monkeypatch):
    archive = Archive(backend)
    archive.add(["n1", "n2"])
    old_store = backend.open(MODEL)
    write_folded = faiss_compaction._write_folded

    def meanwhile(*args):
        folded = write_folded(*args)
        archive.add(["late"])
        archive.delete(image_ids=["n1", "2"])
        return folded

    monkeypatch.setattr(faiss_compaction, "_write_folded", meanwhile)
    backend.compact(MODEL)
    new_store = backend.open(MODEL)
    archive.check(new_store)
    assert backend.pending(MODEL) == 1 + 2
    # A gateway still serving the build compacted away goes on taking in commits until it loads the new one.
    assert old_store.refresh()
    archive.delete(image_ids=["late"])
    assert old_store.refresh() and new_store.refresh()
    archive.check(old_store)
    archive.check(new_store)


def test_a_crash_before_the_generation_file_is_renamed_leaves_the_last_generation(backend, monkeypatch):
    archive = Archive(backend)
    archive.add(["n1"])
    store = backend.open(MODEL)
    before = dict(archive.images)

    def crash(*args):
        raise KeyboardInterrupt  # as a SIGKILL would: the new parts are written, the generation is not
    monkeypatch.setattr(faiss_changes, "write_durably", crash)
    with pytest.raises(KeyboardInterrupt):
        archive.delete(image_ids=["n1"])
    monkeypatch.undo()
    archive.images = before
    assert not store.refresh()
    archive.check(FaissBackend(backend.index_dir).open(MODEL))
    changes = backend.path(MODEL) / faiss_changes.CHANGES_DIR
    assert len(list(changes.iterdir())) == 4  # the generation, the first commit's two, the crashed one's
    archive.delete(image_ids=["n1"])
    assert len(list(changes.iterdir())) == 4  # the crashed commit's file went with the next commit


def test_a_swap_interrupted_between_its_renames_is_put_back(backend):
    archive = Archive(backend)
    folder = backend.path(MODEL)
    os.rename(folder, folder.with_name(f".{folder.name}-retired"))
    assert backend.version(MODEL) is not None
    archive.check(backend.open(MODEL))


def test_an_index_of_a_newer_format_is_refused_with_the_remedy(backend):
    Archive(backend)
    assert backend.open(MODEL).manifest["format"] == 2
    path = backend.path(MODEL) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(dict(manifest, format=3)))
    with pytest.raises(IndexMismatchError, match=r"format 3, newer than this cxr-retrieval reads \(up to 2\).*rebuild"):
        backend.open(MODEL)
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k not in ("format", "base_id")}))
    store = backend.open(MODEL)  # format 1, written before formats: read as it is, and it takes commits
    assert backend.apply(MODEL, Change(image_ids=("1",))).deleted == 1 and store.refresh() and store.image("1") is None


CALIBRATION = {"format": 1, "k": 5, "weighting": "similarity", "fitted": {"queries": 9},
               "labels": {"Nodule": {"method": "platt", "a": 3.0, "b": -2.0}}}


def test_a_calibration_is_kept_with_the_build_through_commits_and_compaction(backend, monkeypatch):
    archive = Archive(backend)
    assert backend.open(MODEL).calibration is None
    version = backend.version(MODEL)
    backend.set_calibration(MODEL, CALIBRATION)
    assert backend.version(MODEL) != version  # gateways see the change and open the build again
    store = backend.open(MODEL)
    assert store.calibration.to_dict() == CALIBRATION and store.calibration is store.calibration
    archive.add(["n1"])
    write_folded = faiss_compaction._write_folded
    changed = dict(CALIBRATION, k=7)

    def meanwhile(*args):  # calibrated again while compacting: the newer calibration wins
        folded = write_folded(*args)
        backend.set_calibration(MODEL, changed)
        return folded

    monkeypatch.setattr(faiss_compaction, "_write_folded", meanwhile)
    assert backend.compact(MODEL)["calibration"] == changed
    assert backend.open(MODEL).calibration.k == 7
    archive.check(backend.open(MODEL))
    backend.set_calibration(MODEL, None)
    assert backend.open(MODEL).calibration is None


def test_a_new_build_drops_the_calibration_and_a_broken_one_gives_none(backend, caplog):
    Archive(backend)
    backend.set_calibration(MODEL, dict(CALIBRATION, k=0))
    assert backend.open(MODEL).calibration is None
    assert "cxr index calibrate" in caplog.text
    backend.set_calibration(MODEL, CALIBRATION)
    Archive(backend)  # rebuilt: its neighbours are not the ones calibrated
    assert backend.open(MODEL).calibration is None


def test_a_calibration_needs_a_build(backend):
    with pytest.raises(IndexMissingError, match="build one first"):
        backend.set_calibration(MODEL, CALIBRATION)
