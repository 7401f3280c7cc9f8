"""indexing.pacs_reconcile without a PACS: what the index holds and the PACS no longer has is gone only
once confirmed (a listing that shifted under deletions misses an instance that is still there), what
the PACS holds and the index lacks is missing, Orthanc's ids are computed from the indexed rows, and
every request waits for the token bucket. (Against a real Orthanc: tests/integration/cxr/test_dicomweb.py
and tests/integration/indexing/test_dicomweb_build.py.)"""

import threading

import pytest

import indexing.pacs_reconcile as pacs_reconcile
from cxr.dicomweb import Instance, Query, orthanc_id
from cxr.errors import InvalidArgumentError
from indexing.pacs_reconcile import OrthancReconciler, QidoReconciler, Stopped, TokenBucket, instance_ids

HELD = [Instance("1.2", "1.2.1", f"1.2.1.{n}") for n in range(4)]
NEW = Instance("1.3", "1.3.1", "1.3.1.0")


class Clock(threading.Event):
    """A clock and a stop event in one: each wait moves the clock on by its timeout, at once."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def __call__(self):
        return self.now

    def wait(self, timeout=None):
        self.now += timeout
        return self.is_set()


def _bucket(per_min=6000.0):
    clock = Clock()
    return TokenBucket(per_min, clock=clock), clock


class Pacs:
    """A DICOMweb PACS holding `held`; its first listing leaves out `shifted` (paging moved under a deletion)."""

    def __init__(self, held, shifted=(), page=2):
        self.held, self.shifted, self.page = list(held), set(shifted), page
        self.lookups, self.listings = [], 0

    def instance_pages(self, query, page):
        self.listings += 1
        listed = [i for i in self.held if self.listings > 1 or i.sop_uid not in self.shifted]
        for start in range(0, len(listed), self.page):
            yield listed[start:start + self.page]

    def has_instance(self, instance):
        self.lookups.append(instance.sop_uid)
        return instance in self.held


def test_the_bucket_paces_requests_to_the_rate_after_a_small_burst():
    bucket, clock = _bucket(per_min=60)
    assert all(bucket.take(clock) for _ in range(66)) and bucket.taken == 66
    assert clock.now == pytest.approx(60.0)  # a burst of 6, then one a second
    clock.set()
    assert not bucket.take(clock)  # stopped while waiting
    with pytest.raises(InvalidArgumentError, match="--qido-requests-per-min 0"):
        TokenBucket(0)


def test_qido_finds_the_gone_and_the_missing_and_looks_up_only_what_the_listing_lacked():
    bucket, clock = _bucket()
    pacs = Pacs([HELD[0], HELD[2], HELD[3], NEW], shifted=[HELD[3].sop_uid])  # HELD[1] deleted
    result = QidoReconciler(pacs, Query(), bucket).run(HELD, {}, clock)
    assert result.gone == {HELD[1].sop_uid} and result.missing == (NEW,)
    assert sorted(pacs.lookups) == sorted([HELD[1].sop_uid, HELD[3].sop_uid])  # HELD[3] was there after all
    assert result.requests == 3 + 2 == bucket.taken  # two pages and the empty one that ends them, two look-ups
    assert "1 gone, 1 missing (5 requests in " in str(result)


def test_a_limited_first_build_is_not_filled_up_by_reconciliations():
    bucket, clock = _bucket()
    result = QidoReconciler(Pacs(HELD + [NEW]), Query(limit=2), bucket).run(HELD, {}, clock)
    assert result.missing == () and result.gone == frozenset()


def test_many_absent_are_confirmed_by_a_second_listing_not_one_by_one(monkeypatch):
    monkeypatch.setattr(pacs_reconcile, "CONFIRM_ONE_BY_ONE", 1)
    bucket, clock = _bucket()
    pacs = Pacs(HELD[:2], shifted=[HELD[0].sop_uid])
    result = QidoReconciler(pacs, Query(), bucket).run(HELD, {}, clock)
    # HELD[0], missed by the first listing only, stays.
    assert result.gone == {HELD[2].sop_uid, HELD[3].sop_uid} and pacs.lookups == [] and pacs.listings == 2


def test_a_stop_ends_a_reconciliation_before_anything_is_decided():
    bucket, clock = _bucket(per_min=60)
    clock.set()
    bucket.tokens = 0
    with pytest.raises(Stopped):
        QidoReconciler(Pacs(HELD), Query(), bucket).run(HELD, {}, clock)


def _row(instance, patient="P1"):
    return {"image_id": instance.sop_uid, "patient_id": patient, "study_instance_uid": instance.study_uid,
            "series_instance_uid": instance.series_uid, "sop_instance_uid": instance.sop_uid}


class Orthanc:
    """Orthanc's REST listing of instance ids (pages by `since` and `limit`) and its look-up by SOP UID."""

    def __init__(self, ids, sops):
        self.ids, self.sops, self.lookups = list(ids), set(sops), []

    def instance_ids(self, since, limit):
        return self.ids[since:since + limit]

    def has_instance(self, sop_uid):
        self.lookups.append(sop_uid)
        return sop_uid in self.sops


def test_orthanc_ids_are_the_sha1_of_the_dicom_identifiers_in_groups_of_eight():
    assert orthanc_id("1") == "356a192b-7913b04c-54574d18-c28d46e6-395428ab"  # patient "1", as Orthanc 1.10 named it
    row = _row(HELD[0])
    assert instance_ids(row) == (orthanc_id("P1", "1.2", "1.2.1", "1.2.1.0"),)
    no_patient = _row(HELD[0], patient="1.2")  # no PatientID: indexed under the study's UID
    assert instance_ids(no_patient) == (orthanc_id("1.2", "1.2", "1.2.1", "1.2.1.0"),
                                        orthanc_id("", "1.2", "1.2.1", "1.2.1.0"))


def test_orthanc_deletions_of_instances_series_studies_or_patients_are_the_sop_uids_whose_ids_went():
    bucket, clock = _bucket()
    rows = {HELD[0].sop_uid: _row(HELD[0]), HELD[1].sop_uid: _row(HELD[1], patient="1.2"),
            HELD[2].sop_uid: _row(HELD[2]), HELD[3].sop_uid: _row(HELD[3])}
    # HELD[2] deleted (with its series, study or patient: its id is gone all the same); HELD[1] has no
    # PatientID and is listed under Orthanc's id of an empty one; ids of instances not indexed are ignored.
    ids = [instance_ids(rows[HELD[0].sop_uid])[0], instance_ids(rows[HELD[1].sop_uid])[1],
           instance_ids(rows[HELD[3].sop_uid])[0], orthanc_id("P9", "9", "9.1", "9.1.1")]
    orthanc = Orthanc(ids, {HELD[0].sop_uid, HELD[1].sop_uid, HELD[3].sop_uid})
    listed = HELD + [NEW]  # NEW could not be read: no row, in no index
    result = OrthancReconciler(orthanc, bucket, page=3).run(listed, rows, clock)
    assert result.gone == {HELD[2].sop_uid} and result.missing == () and orthanc.lookups == [HELD[2].sop_uid]
    assert result.requests == 4  # three pages of ids (3, 1, and the empty one that ends them), one look-up
