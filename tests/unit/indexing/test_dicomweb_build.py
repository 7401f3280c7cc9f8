"""indexing.dicomweb_build's Follower without a PACS or a Triton: an outage of either (or of the vector
store) is waited out with a growing backoff, logged once when it starts and once when it ends, and the
follower goes on where it was: every instance is encoded once, and the feed position is saved only after
the swap that follows. Other errors stop it; so does the stop event during a wait. (A real Orthanc that
goes away and comes back: tests/integration/indexing/test_dicomweb_build.py.)"""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import indexing.dicomweb_build as dicomweb_build
from cxr.dicomweb import Change, Instance, OrthancChanges, PacsAuthError, PacsUnreachableError, Query
from cxr.store.errors import StoreUnavailableError
from cxr.triton.errors import TritonEndpointDownError
from indexing.build import BuildOptions
from indexing.dicomweb_build import BACKOFF_MAX_S, Backoff, Counts, Follower, FollowOptions, neighbour

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
    """Orthanc's change feed: the NewInstance changes of INSTANCES after seq 10; `down` reads fail first."""

    def __init__(self, down=0):
        self.down, self.reads = down, 0

    def new_instances(self, since, limit):
        self.reads += 1
        if self.reads <= self.down:
            raise PACS_DOWN
        changes = [Change(11 + n, i, "DX", "") for n, i in enumerate(INSTANCES) if 11 + n > since]
        return changes[:limit], max([since] + [c.seq for c in changes[:limit]])


class Encoder:
    """encode_new's stand-in: `failures` (exceptions) are raised by the first calls, in order; then each
    instance gets a vector, once. Records the follow state on disk at each call."""

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.encoded, self.states_seen = [], []

    def __call__(self, pacs, cache, instances, model, settings, options):
        self.states_seen.append(cache.follow_state())
        if self.failures:
            raise self.failures.pop(0)
        todo = [i.sop_uid for i in dict.fromkeys(instances) if i.sop_uid not in cache.vectors]
        for sop in todo:
            cache.add_row(sop, {"sop_instance_uid": sop})
        if todo:
            cache.add_batch(todo, np.ones((len(todo), 2), np.float32))
        self.encoded += todo
        return Counts(len(todo), len(instances) - len(todo), 0)


@pytest.fixture
def written(monkeypatch):
    """The index writes (each the held SOP uids), without FAISS."""
    writes = []

    def write(cache, model, output_dir, options, backend, source):
        writes.append([i.sop_uid for i in cache.listed if i.sop_uid in cache.vectors])
        return {"count": len(writes[-1])}

    monkeypatch.setattr(dicomweb_build, "write_from_cache", write)
    monkeypatch.setattr(OrthancChanges, "is_orthanc", lambda self: False)
    return writes


def _follower(tmp_path, pacs, encoder, monkeypatch, lines, state, once=False, feed=None):
    monkeypatch.setattr(dicomweb_build, "encode_new", encoder)
    model = SimpleNamespace(name="m", export_sha256="abc")
    follower = Follower(pacs, Query(), model, None, tmp_path / "index", BuildOptions(progress=False),
                        FollowOptions(interval_s=INTERVAL_S, once=once), log=lines.append)
    follower.feed = feed
    follower.cache.save_follow_state(state)
    return follower


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
    assert written == [[i.sop_uid for i in INSTANCES]]
    assert all(seen == {"qido_since": OLD_DAY} for seen in encoder.states_seen)  # saved only after the swap
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
    assert lines[0].startswith("the PACS unavailable (") and lines[1].startswith("changes up to 13: 3 new")
    assert saved[0]["orthanc_seq"] == 13 and written == [[i.sop_uid for i in INSTANCES]]
    assert encoder.encoded == [i.sop_uid for i in INSTANCES]


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
    assert follower.cache.follow_state() == {"qido_since": OLD_DAY} and written == []


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
    assert written == [[i.sop_uid for i in INSTANCES]]
