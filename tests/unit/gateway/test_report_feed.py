"""The report feed: a new build gets every report of the ledger, later reports are applied as they
come, a report naming another patient is refused on its study's arrival, one for a study not
indexed waits for a build that has it."""

from types import SimpleNamespace

import numpy as np

from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report, ReportStatus
from cxr.store import faiss_store, faiss_writer
from cxr.store.errors import IndexMissingError
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Filter
from gateway.indexes import IndexSet
from gateway.report_feed import ReportFeed
from support import index_metadata, unit_vectors

MODEL = "m"


class Indexes:
    """What the feed asks of gateway.indexes.IndexSet: whether a model has an index, and its store."""

    def __init__(self):
        self.stores = {}

    def has(self, name):
        return name in self.stores

    def index(self, name):
        if name not in self.stores:
            raise IndexMissingError(f"no index for {name}")
        return SimpleNamespace(store=self.stores[name])


def _store(tmp_path, n=8, name="faiss"):
    rows = [dict(row, study_instance_uid=f"1.2.{i // 2}", accession_number=f"ACC{i // 2}", patient_id=f"P{i // 2}")
            for i, row in enumerate(index_metadata(n))]
    faiss_writer.write(tmp_path / name, unit_vectors(n, 8), rows, {"model": MODEL}, [], "flat")
    return faiss_store.load(tmp_path / name)


def _feed(tmp_path, indexes):
    path = tmp_path / "reports" / f"{MODEL}.sqlite"
    return ReportFeed({MODEL: path}, poll_s=0.05, indexes=indexes), ReportLedger(path)


def test_reports_reach_the_rows_and_the_label_filter_and_corrections_replace_them(tmp_path):
    indexes = Indexes()
    indexes.stores[MODEL] = store = _store(tmp_path)
    feed, ledger = _feed(tmp_path, indexes)
    ledger.put(Report("ACC1", patient_id="P1", findings="Left effusion.", time="2026-12-03T09:00:00"), ["Effusion"])
    feed.poll()
    assert [r["findings"] for r in store.study("s1")] == ["Left effusion."] * 2
    assert store.study("s1")[0]["labels"] == ["Effusion"] and store.study("s1")[0]["report_status"] == "final"
    ledger.put(Report("ACC1", patient_id="P1", impression="No effusion.", status=ReportStatus.CORRECTED), [])
    ledger.put(Report(study_instance_uid="1.2.2", status=ReportStatus.CANCELLED))
    feed.poll()
    assert store.study("s1")[0]["impression"] == "No effusion." and store.study("s1")[0]["findings"] == ""
    assert store.study("s1")[0]["report_status"] == "corrected"
    assert store.study("s2")[0]["labels"] == [] and store.study("s2")[0]["report_status"] == "cancelled"
    hits = store.search(unit_vectors(1, 8, seed=3), 8, Filter.of(labels=["Effusion"]))[0]
    assert 2 not in {i for i, _ in hits} and 3 not in {i for i, _ in hits}  # s1 carries it no more


def test_a_report_for_another_patient_is_refused_when_its_study_arrives(tmp_path):
    indexes = Indexes()
    feed, ledger = _feed(tmp_path, indexes)
    ledger.put(Report("ACC3", patient_id="SOMEONE-ELSE", findings="Mass."), ["Mass"])
    ledger.put(Report("ACC0", patient_id="P0", findings="Nodule."), ["Nodule"])
    feed.poll()  # no index yet: both wait
    assert [c.refused for c in ledger.changes()] == ["", ""]
    indexes.stores[MODEL] = store = _store(tmp_path)
    feed.poll()
    assert store.study("s3")[0]["findings"] == "" and "report_status" not in store.study("s3")[0]
    assert store.study("s0")[0]["findings"] == "Nodule." and store.study("s0")[0]["labels_derived"]
    refused = {c.report.accession_number: c.refused for c in ledger.changes()}
    assert "patient id differs" in refused["ACC3"] and refused["ACC0"] == ""
    assert ledger.study("ACC3").patient_id == "P3"  # the build's studies were recorded for the intake


def test_a_new_build_gets_every_report_again_and_the_thread_applies_them(tmp_path):
    indexes = Indexes()
    indexes.stores[MODEL] = _store(tmp_path)
    feed, ledger = _feed(tmp_path, indexes)
    ledger.put(Report("ACC2", patient_id="P2", findings="Edema."), ["Edema"])
    feed.start(indexes)
    try:
        indexes.stores[MODEL] = rebuilt = _store(tmp_path, name="rebuilt")
        for _ in range(100):
            if rebuilt.study("s2")[0]["findings"] == "Edema.":
                break
            feed._stop.wait(0.05)
        assert rebuilt.study("s2")[0]["labels"] == ["Edema"]
    finally:
        feed.close()
    assert not feed._thread.is_alive()


def test_no_ledger_no_file(tmp_path):
    indexes = Indexes()
    indexes.stores[MODEL] = _store(tmp_path)
    feed = ReportFeed({MODEL: tmp_path / "reports" / "m.sqlite"}, indexes=indexes)
    feed.poll()
    assert not (tmp_path / "reports").exists()
    assert np.all([not r.get("labels_derived") for r in indexes.stores[MODEL].rows(range(8))])


def test_a_build_is_served_with_its_reports_already_in_it(tmp_path):
    """IndexSet calls `prepare` with each build it opens, before serving it: no moment without reports."""
    path = tmp_path / "reports" / f"{MODEL}.sqlite"
    with ReportLedger(path) as ledger:
        ledger.put(Report("ACC1", patient_id="P1", findings="Left effusion."), ["Effusion"])
    _store(tmp_path, name=MODEL)
    feed = ReportFeed({MODEL: path})
    served = []

    def prepare(model, store):
        feed.prepare(model, store)
        served.append(store.study("s1")[0]["findings"])

    indexes = IndexSet(FaissBackend(tmp_path), {MODEL: SimpleNamespace(embed_dim=8, export_sha256=None)},
                       prepare=prepare)
    assert served == ["Left effusion."] and indexes.index(MODEL).store.study("s1")[0]["labels"] == ["Effusion"]


def test_a_failing_prepare_does_not_keep_a_build_from_serving(tmp_path, caplog):
    _store(tmp_path, name=MODEL)

    def broken(model, store):
        raise OSError("ledger on a read-only disk")

    indexes = IndexSet(FaissBackend(tmp_path), {MODEL: SimpleNamespace(embed_dim=8, export_sha256=None)},
                       prepare=broken)
    assert indexes.index(MODEL).store.count == 8 and "serving it as built" in caplog.text
