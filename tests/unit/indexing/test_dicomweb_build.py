"""indexing.dicomweb_build's Follower without a PACS, a Triton or a vector store: after the first build,
each batch is one commit to the index in service (never a rewrite), deletions found by a reconciliation
are committed and taken out of the listing, the feed position is saved after the commit (a replay adds
nothing twice), and compaction runs beside ingest once enough rows are pending. An outage of the PACS,
Triton or the vector store is waited out with a growing backoff, logged once when it starts and once
when it ends, and the follower goes on where it was: every instance is encoded once, and the feed
position is saved only after the commit that follows. Other errors stop it; so does the stop event
during a wait. (A real Orthanc that goes away and comes back, and one whose instances are deleted:
tests/integration/indexing/test_dicomweb_build.py.)"""

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import indexing.dicomweb_build as dicomweb_build
from cxr.dicomweb import Change, Instance, OrthancChanges, PacsAuthError, PacsUnreachableError, Query, orthanc_id
from cxr.errors import FailedPreconditionError
from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report
from cxr.settings import Settings
from cxr.store.errors import IndexMissingError, StoreUnavailableError
from cxr.store.interface import Committed
from cxr.triton.errors import TritonEndpointDownError
from indexing.build import BuildOptions
from indexing.dicomweb_build import (
    BACKOFF_MAX_S,
    LISTED_FILE,
    NOTICE_GRACE_S,
    Backoff,
    Counts,
    Follower,
    FollowOptions,
    PacsCache,
    neighbour,
)
from indexing.pacs_notices import Notice
from indexing.pacs_reconcile import Reconciled, instance_ids

INTERVAL_S = 3600.0
OLD_DAY = "20000102"
INSTANCES = [Instance("1.2", "1.2.1", f"1.2.1.{n}") for n in range(3)]
TRITON_DOWN = TritonEndpointDownError("Triton at 127.0.0.1:8001 cannot serve m_image right now (UNAVAILABLE)")
PACS_DOWN = PacsUnreachableError("could not reach the DICOMweb server http://pacs/dicom-web: check --dicomweb")


class Stop(threading.Event):
    """A stop event that takes no time: it records each wait; the follower's wait between two passes
    (INTERVAL_S) ends the run."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return timeout == INTERVAL_S or self.is_set()


class Pacs:
    """What the follower asks of a DICOMweb PACS, listing INSTANCES; `down` listings fail first."""

    url, shown, session = "http://pacs/dicom-web", "http://pacs/dicom-web", None

    def __init__(self, down=0):
        self.down = down
        self.listings = 0

    def check(self):
        pass

    def instances(self, query):
        self.listings += 1
        if self.listings <= self.down:
            raise PACS_DOWN
        return list(INSTANCES)


class Feed:
    """Orthanc's change feed: the NewInstance changes of `instances` (INSTANCES) numbered from 11; `down`
    reads fail first. Orthanc holds `held` instances (all those of the feed unless told)."""

    def __init__(self, down=0, instances=INSTANCES):
        self.down, self.reads = down, 0
        self.instances = list(instances)
        self.held = None
        self.gone, self.lookups, self.holding_down = set(), [], 0  # deleted in Orthanc; /tools/find asked

    def new_instances(self, since, limit):
        self.reads += 1
        if self.reads <= self.down:
            raise PACS_DOWN
        changes = [Change(11 + n, i, "DX", "") for n, i in enumerate(self.instances) if 11 + n > since]
        return changes[:limit], max([since] + [c.seq for c in changes[:limit]])

    def last(self):
        return 10 + len(self.instances)

    def count(self):
        return len(self.instances) - len(self.gone) if self.held is None else self.held

    def holding(self, sops):
        self.lookups.append(list(sops))
        if self.holding_down:
            self.holding_down -= 1
            raise PACS_DOWN
        return {instance_ids(_row(i))[0] for i in self.instances if i.sop_uid in sops and i.sop_uid not in self.gone}


class Encoder:
    """Encoder.encode_new's stand-in: `failures` (exceptions) are raised by the first calls, in order; then each
    instance gets a vector, once. Records the follow state on disk at each call."""

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.encoded, self.states_seen = [], []

    def __call__(self, pacs, cache, instances, refetch=False):
        self.states_seen.append(cache.follow_state())
        if self.failures:
            raise self.failures.pop(0)
        todo = [i for i in dict.fromkeys(instances) if refetch or i.sop_uid not in cache.vectors]
        for instance in todo:
            cache.add_row(instance.sop_uid, _row(instance))
        todo = [i.sop_uid for i in todo]
        if todo:
            cache.add_batch(todo, np.ones((len(todo), 2), np.float32))
        self.encoded += todo
        return Counts(len(todo), len(instances) - len(todo), 0)


def _row(instance, patient="P1"):
    """The index row of an instance, as a PACS build writes it (what Orthanc's ids are computed from)."""
    return {"sop_instance_uid": instance.sop_uid, "image_id": instance.sop_uid, "patient_id": patient,
            "study_instance_uid": instance.study_uid, "series_instance_uid": instance.series_uid}


class Backend:
    """The index in service as a follower writes to it: each commit (image ids added or replaced, image ids
    deleted) and the state of state.json when it came; `pending` rows since the last compaction, and
    compactions that wait for `release` when it is given."""

    def __init__(self, cache_dir=None, release=None, missing=False):
        self.cache_dir, self.release, self.missing = cache_dir, release, missing
        self.images, self.commits, self.states, self.compactions = {}, [], [], 0
        self.pending_rows = 0

    def apply(self, model, change):
        if self.missing:
            raise IndexMissingError("no index of m: build it first")
        assert change.export_sha256 == "abc" and len(change.vectors if change.vectors is not None else []) == len(
            change.rows)
        deleted = sum(self.images.pop(image_id, None) is not None for image_id in change.image_ids)
        replaced = sum(row["image_id"] in self.images for row in change.rows)
        self.images.update((row["image_id"], row) for row in change.rows)
        self.commits.append(([row["image_id"] for row in change.rows], list(change.image_ids)))
        if self.cache_dir is not None:
            self.states.append(json.loads((self.cache_dir / "follow.json").read_text()))
        self.pending_rows += len(change.rows) + deleted
        return Committed(len(self.commits), len(change.rows) - replaced, replaced, deleted)

    def pending(self, model):
        return self.pending_rows

    def compact(self, model):
        if self.release is not None:
            assert self.release.wait(10)
        self.compactions += 1
        self.pending_rows = 0
        return {"count": len(self.images)}


@pytest.fixture
def written(monkeypatch):
    """The whole index writes (each the held SOP uids), without FAISS."""
    writes = []

    def write(cache, model, output_dir, options, backend, source):
        writes.append([i.sop_uid for i in cache.listed if i.sop_uid in cache.vectors])
        return {"count": len(writes[-1])}

    monkeypatch.setattr(dicomweb_build, "write_from_cache", write)
    monkeypatch.setattr(OrthancChanges, "is_orthanc", lambda self: False)
    return writes


def _follower(tmp_path, pacs, encoder, monkeypatch, lines, state, once=False, feed=None, backend=None,
              settings=Settings(), notices=None, **follow):
    monkeypatch.setattr(dicomweb_build.Encoder, "encode_new",
                        lambda _, pacs, cache, instances, refetch=False: encoder(pacs, cache, instances, refetch))
    model = SimpleNamespace(name="m", export_sha256="abc")
    follow = dict({"reconcile_s": float("inf")}, **follow)
    follower = Follower(pacs, Query(), model, settings, tmp_path / "index", BuildOptions(progress=False),
                        FollowOptions(interval_s=INTERVAL_S, once=once, **follow),
                        backend=backend if backend is not None else Backend(), log=lines.append, notices=notices)
    follower.feed = feed
    follower.cache.save_follow_state(state)
    return follower


def _commits(follower):
    """Each commit: (image ids added or replaced, image ids deleted)."""
    return follower.store.commits


def _backoff(lines):
    """A backoff whose clock moves 7 s a look and whose jitter is none."""
    ticks = iter(range(0, 1000, 7))
    return Backoff(lines.append, clock=lambda: float(next(ticks)), uniform=lambda: 0.0)


def test_a_triton_outage_is_waited_out_and_every_instance_encoded_once(tmp_path, monkeypatch, written):
    lines, stop = [], Stop()
    encoder = Encoder([TRITON_DOWN, TRITON_DOWN])
    follower = _follower(tmp_path, Pacs(), encoder, monkeypatch, lines, {"qido_since": OLD_DAY})
    follower.run(stop, _backoff(lines))
    assert stop.waits == [1.0, 2.0, INTERVAL_S]  # the backoff doubles; then the usual interval
    outage = [line for line in lines if "Triton" in line]
    assert len(outage) == 2
    assert outage[0].startswith("Triton unavailable (") and f"backoff up to {BACKOFF_MAX_S:g} s" in outage[0]
    assert outage[1] == "Triton back after 7 s, going on"
    # Listed before the outage, encoded after it: none lost, none encoded twice.
    assert sorted(encoder.encoded) == sorted(i.sop_uid for i in INSTANCES)
    assert _commits(follower) == [([i.sop_uid for i in INSTANCES], [])] and written == []
    assert all(seen == {"qido_since": OLD_DAY} for seen in encoder.states_seen)  # saved only after the commit
    assert follower.cache.follow_state()["qido_since"] > OLD_DAY


def test_a_pacs_outage_in_the_change_feed_keeps_the_position_until_the_swap(tmp_path, monkeypatch, written):
    lines, stop = [], Stop()
    feed, encoder = Feed(down=2), Encoder()
    follower = _follower(tmp_path, Pacs(), encoder, monkeypatch, lines, {"orthanc_seq": 10, "qido_since": OLD_DAY},
                         feed=feed)
    saved = []
    save = follower.cache.save_follow_state
    monkeypatch.setattr(follower.cache, "save_follow_state", lambda state: (saved.append(dict(state)), save(state)))
    follower.run(stop, _backoff(lines))
    assert stop.waits == [1.0, 2.0, INTERVAL_S] and feed.reads == 3  # two failed, then the changes
    assert [line for line in lines if "PACS" in line] == [lines[0], "the PACS back after 7 s, going on"]
    assert lines[0].startswith("the PACS unavailable (") and lines[1] == "changes up to 13: +3 ~0 -0, generation 1"
    assert saved[0]["orthanc_seq"] == 13 and _commits(follower) == [([i.sop_uid for i in INSTANCES], [])]
    assert encoder.encoded == [i.sop_uid for i in INSTANCES] and written == []


def test_the_waits_double_up_to_the_cap_and_jitter_only_shortens_them():
    lines, stop = [], Stop()
    backoff = Backoff(lines.append, first_s=1.0, max_s=60.0, jitter=0.25, clock=lambda: 0.0, uniform=lambda: 1.0)
    for _ in range(9):
        assert backoff.wait(PACS_DOWN, stop)
    assert stop.waits == [0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0, 45.0]
    assert len(lines) == 1
    backoff.recovered()
    backoff.recovered()  # no outage: no line
    assert len(lines) == 2
    backoff.wait(PACS_DOWN, stop)  # a new outage starts from the first wait again
    assert stop.waits[-1] == 0.75 and len(lines) == 3


def test_a_change_of_who_is_down_is_logged_once_too():
    lines, stop = [], Stop()
    backoff = Backoff(lines.append, clock=lambda: 0.0, uniform=lambda: 0.0)
    for error in (PACS_DOWN, PACS_DOWN, TRITON_DOWN, TRITON_DOWN):
        backoff.wait(error, stop)
    assert [line.split(" (")[0] for line in lines] == ["the PACS unavailable", "Triton unavailable"]
    assert stop.waits == [1.0, 2.0, 4.0, 8.0]


def test_the_neighbours_are_named():
    assert neighbour(StoreUnavailableError("Milvus at x:19530 cannot be reached")) == "the vector store"
    assert (neighbour(TRITON_DOWN), neighbour(PACS_DOWN)) == ("Triton", "the PACS")


def test_stop_during_a_wait_returns_at_once_with_the_position_kept(tmp_path, monkeypatch, written):
    lines = []
    stop = threading.Event()
    pacs = Pacs(down=10**6)
    follower = _follower(tmp_path, pacs, Encoder(), monkeypatch, lines, {"qido_since": OLD_DAY})
    runner = threading.Thread(target=follower.run, args=(stop,))  # the real backoff: waits of 1 s and more
    runner.start()
    while not lines:
        threading.Event().wait(0.01)
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive() and pacs.listings == 1
    assert follower.cache.follow_state() == {"qido_since": OLD_DAY} and _commits(follower) == []


def test_an_error_that_is_no_outage_stops_the_follower_with_its_message(tmp_path, monkeypatch, written):
    lines, stop = [], Stop()
    refused = PacsAuthError("the DICOMweb server refused the credentials (HTTP 401): check CXR_DICOMWEB_PASSWORD")
    follower = _follower(tmp_path, Pacs(), Encoder([refused]), monkeypatch, lines, {"qido_since": OLD_DAY})
    with pytest.raises(PacsAuthError, match="CXR_DICOMWEB_PASSWORD"):
        follower.run(stop, _backoff(lines))
    assert stop.waits == [] and lines == []


def test_once_fails_on_an_outage_rather_than_hang(tmp_path, monkeypatch, written):
    lines, stop = [], Stop()
    follower = _follower(tmp_path, Pacs(), Encoder([TRITON_DOWN]), monkeypatch, lines, {"qido_since": OLD_DAY},
                         once=True)
    with pytest.raises(TritonEndpointDownError, match="cannot serve"):
        follower.run(stop, _backoff(lines))
    assert stop.waits == [] and follower.cache.follow_state() == {"qido_since": OLD_DAY}
    follower.run(stop)  # the next run, Triton back: the instances listed before are encoded
    assert _commits(follower) == [([i.sop_uid for i in INSTANCES], [])] and written == []


class Reconciler:
    """A reconciliation's stand-in: says `gone` went and `missing` are there, and counts its runs."""

    finds_missing = True

    def __init__(self, gone=(), missing=()):
        self.gone, self.missing, self.runs = set(gone), list(missing), []

    def run(self, listed, rows, stop):
        self.runs.append(sorted(i.sop_uid for i in listed))
        return Reconciled(frozenset(self.gone), tuple(self.missing), 2, 0.0, dicomweb_build.time.time())


def _orthanc_follower(tmp_path, monkeypatch, lines, feed, **kwargs):
    backend = Backend(cache_dir=tmp_path / "index.dicomweb")
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {"orthanc_seq": 10, "qido_since": OLD_DAY},
                         once=True, feed=feed, backend=backend, **kwargs)
    return follower


def test_after_the_first_build_each_batch_is_one_commit_saved_after_it_and_nothing_is_rewritten(
        tmp_path, monkeypatch, written):
    lines = []
    more = [Instance("1.3", "1.3.1", f"1.3.1.{n}") for n in range(2)]
    feed = Feed(instances=INSTANCES)
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {}, once=True, feed=feed,
                         backend=Backend(cache_dir=tmp_path / "index.dicomweb"), batch=2)
    follower.run()
    assert written == [[i.sop_uid for i in INSTANCES]] and _commits(follower) == []  # the first build, whole
    assert follower.cache.follow_state()["orthanc_seq"] == 13
    feed.instances += more
    follower.run()
    assert written == [[i.sop_uid for i in INSTANCES]]  # no rewrite: one commit per batch
    assert _commits(follower) == [([more[0].sop_uid, more[1].sop_uid], [])]
    assert follower.store.states[0]["orthanc_seq"] == 13  # the position is saved after the commit
    assert follower.cache.follow_state()["orthanc_seq"] == 15
    assert "changes up to 15: +2 ~0 -0, generation 1" in lines
    assert [i.sop_uid for i in follower.cache.listed] == [i.sop_uid for i in INSTANCES + more]


def test_a_batch_replayed_after_a_crash_between_commit_and_save_adds_nothing_twice(tmp_path, monkeypatch, written):
    lines = []
    follower = _orthanc_follower(tmp_path, monkeypatch, lines, Feed())
    save = follower.cache.save_follow_state
    crashes = iter([True])

    def crash_once(state):
        if next(crashes, False):
            raise KeyboardInterrupt("killed between the commit and the save")
        save(state)

    monkeypatch.setattr(follower.cache, "save_follow_state", crash_once)
    with pytest.raises(KeyboardInterrupt):
        follower.run()
    assert follower.cache.follow_state()["orthanc_seq"] == 10 and len(follower.store.images) == 3
    follower.run()  # the same changes again
    assert lines[-1] == "changes up to 13: +0 ~3 -0, generation 2" and len(follower.store.images) == 3
    assert follower.cache.follow_state()["orthanc_seq"] == 13


def test_orthanc_holding_fewer_instances_starts_a_reconciliation_and_the_deleted_leave_index_and_listing(
        tmp_path, monkeypatch, written):
    lines = []
    feed = Feed()
    follower = _orthanc_follower(tmp_path, monkeypatch, lines, feed)
    follower.reconciler = reconciler = Reconciler(gone=[INSTANCES[1].sop_uid])
    follower.run()
    assert reconciler.runs == [] and follower.cache.follow_state()["orthanc_count"] == 3  # counted, nothing asked
    feed.held = 2  # deleted in Orthanc: no change of the feed says so
    follower.run()
    assert reconciler.runs == [sorted(i.sop_uid for i in INSTANCES)]
    assert _commits(follower)[-1] == ([], [INSTANCES[1].sop_uid])
    assert lines[-1] == "instances deleted from the PACS: +0 ~0 -1, generation 2"
    assert not follower.cache.is_listed(INSTANCES[1].sop_uid) and set(follower.store.images) == {
        INSTANCES[0].sop_uid, INSTANCES[2].sop_uid}
    model = SimpleNamespace(name="m", export_sha256="abc")
    assert not PacsCache(tmp_path / "index.dicomweb", model).is_listed(INSTANCES[1].sop_uid)  # on disk too
    follower.run()  # the count holds: nothing asked
    assert len(reconciler.runs) == 1
    feed.instances.append(INSTANCES[1])  # stored again: back
    feed.held = 3
    follower.run()
    assert _commits(follower)[-1] == ([INSTANCES[1].sop_uid], []) and len(follower.store.images) == 3
    assert follower.cache.is_listed(INSTANCES[1].sop_uid) and len(reconciler.runs) == 1


def test_the_count_is_not_compared_while_instances_arrive(tmp_path, monkeypatch, written):
    lines = []
    feed = Feed()
    follower = _orthanc_follower(tmp_path, monkeypatch, lines, feed)
    follower.reconciler = reconciler = Reconciler()
    follower.run()
    feed.held = 2
    feed.last = lambda: 99  # stored after the feed was read: in the count, not in what was read
    follower.run()
    assert reconciler.runs == [] and follower.cache.follow_state()["orthanc_count"] == 3


def test_a_reconciliation_adds_what_is_missing_and_deletes_what_is_gone_when_due(tmp_path, monkeypatch, written):
    lines = []
    extra = Instance("1.4", "1.4.1", "1.4.1.0")
    backend = Backend()
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {"qido_since": OLD_DAY}, once=True,
                         backend=backend, reconcile_s=0.0)
    follower.reconciler = Reconciler(gone=[INSTANCES[0].sop_uid], missing=[extra, INSTANCES[2]])
    follower.run()
    assert _commits(follower) == [([i.sop_uid for i in INSTANCES], []), ([], [INSTANCES[0].sop_uid]),
                                  ([extra.sop_uid], [])]
    assert lines[-3].startswith("reconciled with the PACS: 1 gone, 2 missing (2 requests in ")
    assert [i.sop_uid for i in follower.cache.listed] == [INSTANCES[1].sop_uid, INSTANCES[2].sop_uid, extra.sop_uid]
    assert follower.cache.follow_state()["reconciled_at"] > 0


def test_what_was_committed_while_a_reconciliation_listed_is_not_deleted(tmp_path, monkeypatch, written):
    follower = _orthanc_follower(tmp_path, monkeypatch, [], Feed())
    follower.run()
    follower._added_while_reconciling = {INSTANCES[0].sop_uid}  # stored again after the listing began
    gone = frozenset(i.sop_uid for i in INSTANCES[:2])
    follower._reconciled((Reconciled(gone, (), 1, 0.0, 0.0), None), follower.cache.follow_state())
    assert _commits(follower)[-1] == ([], [INSTANCES[1].sop_uid])


def test_a_failed_reconciliation_is_logged_and_tried_again_later_and_ingest_goes_on(tmp_path, monkeypatch, written):
    lines = []
    follower = _orthanc_follower(tmp_path, monkeypatch, lines, Feed(), reconcile_s=0.0)

    class Refused:
        def run(self, listed, rows, stop):
            raise PacsAuthError("the PACS refused the credentials (HTTP 401) while listing")

    follower.reconciler = Refused()
    follower.run()
    assert lines[-1].startswith("reconciliation with the PACS failed (the PACS refused")
    assert len(_commits(follower)) == 1


def test_compaction_runs_beside_ingest_one_at_a_time_and_is_waited_for(tmp_path, monkeypatch, written):
    lines, release = [], threading.Event()
    feed = Feed()
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {"orthanc_seq": 10, "qido_since": OLD_DAY},
                         once=True, feed=feed, backend=Backend(release=release), batch=1,
                         settings=Settings(index_compact_rows=2))
    runner = threading.Thread(target=follower.run)
    runner.start()
    while not any(line.startswith("waiting for the compaction") for line in lines):
        assert runner.is_alive()
        threading.Event().wait(0.01)
    assert len(_commits(follower)) == 3 and follower.store.compactions == 0  # ingest went on meanwhile
    release.set()
    runner.join(timeout=10)
    assert not runner.is_alive() and follower.store.compactions == 1  # one at a time: the third commit waited
    assert lines.index("compacting the index: 2 rows pending") == 2  # after the second commit
    assert lines[-1].startswith("compacted the index in ") and lines[-1].endswith(" s")


def test_the_first_index_is_written_whole_when_nothing_was_readable_before(tmp_path, monkeypatch, written):
    lines = []
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {"orthanc_seq": 10, "qido_since": OLD_DAY},
                         once=True, feed=Feed(), backend=Backend(missing=True))
    follower.run()
    assert written == [[i.sop_uid for i in INSTANCES]] and lines[-1].endswith("the index holds 3 images")


def test_orthanc_is_looked_at_every_second_and_a_qido_pacs_every_minute(tmp_path, monkeypatch):
    from indexing.pacs_reconcile import OrthancReconciler, QidoReconciler

    model = SimpleNamespace(name="m", export_sha256="abc")
    for orthanc, interval, kind in ((True, 1.0, OrthancReconciler), (False, 60.0, QidoReconciler)):
        monkeypatch.setattr(OrthancChanges, "is_orthanc", lambda self, answer=orthanc: answer)
        follower = Follower(Pacs(), Query(), model, Settings(), tmp_path / "index", backend=Backend())
        assert follower.interval_s == interval and isinstance(follower.reconciler, kind)
    follower = Follower(Pacs(), Query(), model, Settings(), tmp_path / "index", backend=Backend(),
                        follow=FollowOptions(interval_s=5.0))
    assert follower.interval_s == 5.0


def test_the_listing_takes_out_deleted_instances_and_lists_them_again_when_stored_again(tmp_path):
    model = SimpleNamespace(name="m", export_sha256="abc")
    cache = PacsCache(tmp_path / "cache", model)
    cache.set_listed(INSTANCES)
    cache.unlist([INSTANCES[0].sop_uid, "never-listed"])
    assert cache.extend_listed(INSTANCES) == [INSTANCES[0]]
    cache.unlist([INSTANCES[1].sop_uid])
    again = PacsCache(tmp_path / "cache", model)
    assert again.listed == [INSTANCES[2], INSTANCES[0]] and again.has_study("1.2")
    again.unlist([INSTANCES[2].sop_uid, INSTANCES[0].sop_uid])
    assert not again.has_study("1.2") and again.listed == []
    # Appended to: 3 listed, 1 out, 1 back, 1 out made 6 lines for 2 listed, written whole when `again`
    # opened; then 2 out.
    assert len((tmp_path / "cache" / LISTED_FILE).read_text().splitlines()) == 4
    PacsCache(tmp_path / "cache", model)
    assert (tmp_path / "cache" / LISTED_FILE).read_text() == ""


def test_studies_a_commit_adds_bring_back_the_reports_waiting_for_them(tmp_path, monkeypatch, written):
    settings = Settings(index_dir=tmp_path / "indexes")
    with ReportLedger(settings.reports_path("m")) as ledger:
        ledger.put(Report("", study_instance_uid="1.3", findings="waits for its study"))
        seen = ledger.last_seq()
    feed = Feed(instances=INSTANCES)
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, [], {}, once=True, feed=feed, settings=settings)
    follower.run()
    monkeypatch.setattr(Encoder, "__call__", _encoder_of_study("1.3"))
    feed.instances += [Instance("1.3", "1.3.1", "1.3.1.0")]
    follower.run()
    with ReportLedger(settings.reports_path("m")) as ledger:
        assert [c.report.findings for c in ledger.changes(after=seen)] == ["waits for its study"]
        assert ledger.study(study_instance_uid="1.3").study_uid == "1.3"


def _encoder_of_study(study: str):
    """Encoder's call, with rows that name their study as a PACS build's rows do."""
    def encode(self, pacs, cache, instances, refetch=False):
        todo = [i.sop_uid for i in dict.fromkeys(instances) if refetch or i.sop_uid not in cache.vectors]
        for sop in todo:
            cache.add_row(sop, {"sop_instance_uid": sop, "image_id": sop, "study_uid": study,
                                "study_instance_uid": study})
        if todo:
            cache.add_batch(todo, np.ones((len(todo), 2), np.float32))
        return Counts(len(todo), len(instances) - len(todo), 0)
    return encode


class Notices:
    """Orthanc's deletion notices as a follower takes them: each take gets the next of `batches` (a list,
    or a function called then, which may change the feed first); once none is left, `stop` is set."""

    def __init__(self, stop, *batches):
        self.stop, self.batches = stop, list(batches)

    def take(self, timeout):
        if not self.batches:
            self.stop.set()
            return []
        batch = self.batches.pop(0)
        return batch() if callable(batch) else list(batch)


def _noticed_follower(tmp_path, monkeypatch, lines, feed, notices):
    monkeypatch.setattr(OrthancChanges, "is_orthanc", lambda self: True)
    follower = _follower(tmp_path, Pacs(), Encoder(), monkeypatch, lines, {"orthanc_seq": 10, "qido_since": OLD_DAY},
                         feed=feed, backend=Backend(cache_dir=tmp_path / "index.dicomweb"), notices=notices)
    follower.reconciler = Reconciler()
    return follower


def _deleted(feed, *instances, levels=("Instance",)):
    """The notices Orthanc sends once it deleted `instances` (and, with `levels`, their series, study, patient)."""
    def notices():
        feed.gone.update(i.sop_uid for i in instances)
        ids = {"Patient": lambda i: ("P1",), "Study": lambda i: ("P1", i.study_uid),
               "Series": lambda i: ("P1", i.study_uid, i.series_uid),
               "Instance": lambda i: ("P1", i.study_uid, i.series_uid, i.sop_uid)}
        return [Notice(level, orthanc_id(*ids[level](i))) for i in instances for level in levels]
    return notices


def test_deletion_notices_are_committed_at_once_one_commit_a_batch_for_what_orthanc_confirms_gone(
        tmp_path, monkeypatch, written):
    lines, stop, feed = [], Stop(), Feed()
    notices = Notices(stop, [], lambda: _deleted(feed, INSTANCES[0])() + [Notice("Patient", orthanc_id("P9"))],
                      _deleted(feed, INSTANCES[1], levels=("Instance", "Series")))
    follower = _noticed_follower(tmp_path, monkeypatch, lines, feed, notices)
    follower.run(stop)
    sops = [i.sop_uid for i in INSTANCES]
    # The first pass indexed the three; then each batch of notices was one commit, between two passes.
    assert _commits(follower) == [(sops, []), ([], [sops[0]]), ([], [sops[1]])] and stop.waits == []
    # The series notice names INSTANCES[2] too (same series), which Orthanc still holds: kept.
    assert feed.lookups == [[sops[0]], [sops[1], sops[2]]]
    assert lines[-2:] == ["deleted in Orthanc (notices): +0 ~0 -1, generation 2",
                          "deleted in Orthanc (notices): +0 ~0 -1, generation 3"]
    assert [i.sop_uid for i in follower.cache.listed] == [sops[2]] and list(follower.store.images) == [sops[2]]
    assert follower.cache.follow_state()["orthanc_notified"] == 2  # Instance notices, for the count
    # The next pass: Orthanc holds two fewer, as the notices said: no reconciliation is asked for.
    stop.clear()
    follower.notices = Notices(stop, [])
    follower.run(stop)
    state = follower.cache.follow_state()
    assert follower.reconciler.runs == [] and "deletions_seen_at" not in state
    assert (state["orthanc_count"], state["orthanc_notified"]) == (1, 0)


def test_a_notice_of_an_instance_stored_again_in_place_deletes_nothing_whenever_it_comes(
        tmp_path, monkeypatch, written):
    lines, stop, feed = [], Stop(), Feed()

    def stored_again():  # OverwriteInstances: Orthanc deleted the old copy (a notice) and holds the new one
        feed.instances.append(INSTANCES[0])
        return [Notice("Instance", instance_ids(_row(INSTANCES[0]))[0])]

    follower = _noticed_follower(tmp_path, monkeypatch, lines, feed, Notices(stop, [], stored_again))
    follower.run(stop)
    assert feed.lookups == [[INSTANCES[0].sop_uid]] and len(_commits(follower)) == 1
    assert follower.cache.is_listed(INSTANCES[0].sop_uid) and len(follower.store.images) == 3
    stop.clear()
    follower.notices = Notices(stop, [])
    feed.held = 3
    follower.run(stop)  # the feed's entry of the new copy: fetched again; the count holds
    assert _commits(follower)[-1] == ([INSTANCES[0].sop_uid], []) and lines[-1].endswith("+0 ~1 -0, generation 2")
    assert follower.reconciler.runs == [] and follower.cache.follow_state()["orthanc_count"] == 3


def test_a_count_short_of_the_notices_asks_for_a_reconciliation_once_no_notice_came_for_a_while(
        tmp_path, monkeypatch, written):
    feed = Feed()
    follower = _noticed_follower(tmp_path, monkeypatch, [], feed, Notices(Stop()))
    state = {"orthanc_seq": 13, "orthanc_count": 3, "orthanc_seen": 0, "orthanc_notified": 0}
    feed.held = 2
    follower._count_orthanc(state)  # one gone, no notice yet: it may be on its way
    assert "deletions_seen_at" not in state and state["orthanc_count"] == 3
    state["orthanc_notified"] = 1  # it came
    follower._count_orthanc(state)
    assert "deletions_seen_at" not in state and "orthanc_short_since" not in state
    assert (state["orthanc_count"], state["orthanc_notified"]) == (2, 0)
    feed.held = 1  # another one gone, and no notice comes
    follower._count_orthanc(state)
    state["orthanc_short_since"] -= NOTICE_GRACE_S
    follower._notice_at = dicomweb_build.time.time()  # notices still coming (of a large deletion)
    follower._count_orthanc(state)
    assert "deletions_seen_at" not in state
    follower._notice_at -= NOTICE_GRACE_S
    follower._count_orthanc(state)
    assert state["deletions_seen_at"] > 0 and state["orthanc_count"] == 1 and "orthanc_short_since" not in state


def test_notices_that_could_not_be_confirmed_in_an_outage_are_committed_after_it(tmp_path, monkeypatch, written):
    lines, stop, feed = [], Stop(), Feed()
    feed.holding_down = 1
    follower = _noticed_follower(tmp_path, monkeypatch, lines, feed, Notices(stop, [], _deleted(feed, INSTANCES[2])))
    follower.run(stop, _backoff(lines))
    assert stop.waits == [1.0]  # the backoff's first wait; then a pass, and the notice kept is committed
    assert _commits(follower)[-1] == ([], [INSTANCES[2].sop_uid]) and len(feed.lookups) == 2
    assert lines[-3].startswith("the PACS unavailable") and lines[-1].startswith("the PACS back after")
    assert lines[-2] == "deleted in Orthanc (notices): +0 ~0 -1, generation 2"  # at the start of the pass


def test_deletion_notices_need_orthanc(tmp_path, monkeypatch, written):
    with pytest.raises(FailedPreconditionError, match="does not answer as Orthanc"):
        _follower(tmp_path, Pacs(), Encoder(), monkeypatch, [], {}, notices=Notices(Stop()))


class _Pool:
    made = 0

    def __init__(self, workers):
        _Pool.made += 1
        self.terminated = False

    def terminate(self):
        self.terminated = True

    def join(self):
        assert self.terminated


class _Client:
    def __init__(self, *args):
        self.closed = False

    def close(self):
        self.closed = True


def test_an_encoder_keeps_its_decoders_and_triton_client_across_batches(monkeypatch, tmp_path):
    """Spawning the decoder pool costs about a CPU-second: a follower's batches share one pool and client."""
    _Pool.made, used = 0, []
    monkeypatch.setattr(dicomweb_build, "decoder_pool", _Pool)
    monkeypatch.setattr(dicomweb_build, "TowerClient", _Client)
    monkeypatch.setattr(dicomweb_build, "connections", lambda settings: [])
    monkeypatch.setattr(dicomweb_build, "_fetched_and_decoded",
                        lambda pacs, cache, todo, pool, size, workers: used.append(pool) or iter(()))
    monkeypatch.setattr(dicomweb_build, "encode_stream", lambda decoded, client, *rest: used.append(client))
    model = SimpleNamespace(name="m", image=None, text=None, max_batch_size=8, image_size=224)
    cache = SimpleNamespace(vectors={}, added=0, add_batch=None, add_skipped=None)
    encoder = dicomweb_build.Encoder(model, Settings(), BuildOptions(progress=False, workers=1))
    for batch in ("1", "2", "3"):
        encoder.encode_new(None, cache, [Instance(batch, f"{batch}.1", f"{batch}.1.1")])
    pool, client = used[0], used[1]
    assert _Pool.made == 1 and used == [pool, client] * 3
    encoder.close()
    encoder.close()
    assert pool.terminated and client.closed
    encoder.encode_new(None, cache, [Instance("4", "4.1", "4.1.1")])  # after close: made again
    assert _Pool.made == 2
    encoder.close()
