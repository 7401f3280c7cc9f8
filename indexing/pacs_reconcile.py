"""What a follower's index and its PACS disagree on: instances the index holds that the PACS no longer
has (deleted there), and, where nothing else tells of them, instances the PACS has that the index lacks.

No change feed tells of deletions (Orthanc's /changes has none: cxr.dicomweb), so a follower lists
what the PACS holds and compares. Orthanc lists its instance ids cheaply (REST /instances, 10,000 a
request) and each indexed row gives the id Orthanc gave it (cxr.dicomweb.orthanc_id), so only
deletions are looked for there: its feed is complete for what it still holds. Another PACS is listed
by root-level QIDO-RS (1,000 instances a request), which finds both.

A listing of an archive that changes while it is read can miss an instance (paging by offset shifts
when one before it goes), so an instance is deleted from the index only once confirmed gone: by one
look-up each when there are few (up to CONFIRM_ONE_BY_ONE), else by a second listing that misses it too.

Every request goes through a TokenBucket of `requests_per_min` (the --qido-requests-per-min option), so
a reconciliation weighs on the PACS as little as asked. A whole pass over 1,000,000 instances costs
about 1,000 QIDO-RS requests plus one per instance gone (17 min at the default 60 a minute; 2.8 h on a
PACS that caps answers at 100), or about 100 requests on Orthanc (under 2 min).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from cxr.dicomweb import LISTING_PAGE, DicomWeb, Instance, OrthancChanges, Query, orthanc_id
from cxr.errors import InvalidArgumentError

ORTHANC_PAGE = 10_000  # instance ids per request of Orthanc's REST listing (about 450 kB)
CONFIRM_ONE_BY_ONE = 1000  # more instances missing from a listing than this: confirmed by listing again


class TokenBucket:
    """At most `per_min` requests a minute on average, and `burst` at once after a quiet while."""

    def __init__(self, per_min: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic):
        if per_min <= 0:
            raise InvalidArgumentError(f"--qido-requests-per-min {per_min:g}: give a number of requests a minute "
                                       "above 0 (60 by default)")
        self.rate = per_min / 60.0
        self.capacity = float(burst or max(1, int(per_min) // 10))
        self.clock = clock
        self.tokens, self.at = self.capacity, clock()
        self.taken = 0
        self._lock = threading.Lock()

    def take(self, stop: threading.Event) -> bool:
        """Wait for a token; False when `stop` was set meanwhile."""
        while True:
            with self._lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    self.taken += 1
                    return True
                wait = (1 - self.tokens) / self.rate
            if stop.wait(wait):
                return False


class Stopped(Exception):
    """The follower was stopped during a reconciliation; nothing of it is applied."""


@dataclass(frozen=True)
class Reconciled:
    """One reconciliation: the SOP UIDs held that the PACS no longer has (each confirmed), the instances
    it has that were not held, the requests it took, and when it began (time.time(): what is stored
    after that is found by the next one)."""

    gone: frozenset[str]
    missing: tuple[Instance, ...]
    requests: int
    seconds: float
    started: float

    def __str__(self) -> str:
        return (f"{len(self.gone)} gone, {len(self.missing)} missing ({self.requests} requests in "
                f"{self.seconds:.0f} s)")


class Reconciler(ABC):
    """Lists the PACS at the bucket's pace and compares with what a follower holds."""

    finds_missing = False  # whether it finds instances the index lacks too (else deletions only)

    def __init__(self, bucket: TokenBucket):
        self.bucket = bucket

    def run(self, listed: list[Instance], rows: dict[str, dict], stop: threading.Event) -> Reconciled:
        """Compare the PACS with the follower's listed instances (and the index rows of those indexed);
        raises Stopped when `stop` is set before the end."""
        started, clock, taken = time.time(), time.monotonic(), self.bucket.taken
        held = self._held(listed, rows)
        present, missing = self._listing(held, stop)
        absent = set(held.values()) - {held[key] for key in present if key in held}
        if len(absent) > CONFIRM_ONE_BY_ONE:
            again, _ = self._listing(held, stop)
            gone = absent - {held[key] for key in again if key in held}
        else:
            gone = {sop for sop in absent if self._paced(stop) and not self._still_there(sop)}
        return Reconciled(frozenset(gone), tuple(missing), self.bucket.taken - taken, time.monotonic() - clock,
                          started)

    def _paced(self, stop: threading.Event) -> bool:
        if not self.bucket.take(stop):
            raise Stopped()
        return True

    def _pages(self, pages: Iterator, stop: threading.Event) -> Iterator:
        """`pages`, one request each, at the bucket's pace."""
        while self._paced(stop) and (page := next(pages, None)) is not None:
            yield page

    @abstractmethod
    def _held(self, listed: list[Instance], rows: dict[str, dict]) -> dict[str, str]:
        """What the listing is compared by -> the SOP UID of the held instance it stands for (one or more
        keys per instance: an instance is present when any of its keys is listed)."""

    @abstractmethod
    def _listing(self, held: dict[str, str], stop: threading.Event) -> tuple[set[str], list[Instance]]:
        """The keys of what the PACS holds, and the instances it holds that are not held."""

    @abstractmethod
    def _still_there(self, sop_uid: str) -> bool:
        """One look-up: whether the PACS still holds the instance."""


class QidoReconciler(Reconciler):
    """Any DICOMweb PACS: the instances matching the follower's query at any date since its --since,
    by root-level QIDO-RS, compared by SOPInstanceUID; finds instances missing from the index too."""

    def __init__(self, pacs: DicomWeb, query: Query, bucket: TokenBucket, page: int = LISTING_PAGE):
        super().__init__(bucket)
        self.pacs, self.query, self.page = pacs, replace(query, limit=0), page
        self.finds_missing = not query.limit  # a trial build of --limit N is not filled up to the archive
        self._instances: dict[str, Instance] = {}

    def _held(self, listed: list[Instance], rows: dict[str, dict]) -> dict[str, str]:
        self._instances = {i.sop_uid: i for i in listed}
        return {sop: sop for sop in self._instances}

    def _listing(self, held: dict[str, str], stop: threading.Event) -> tuple[set[str], list[Instance]]:
        present: set[str] = set()
        missing: list[Instance] = []
        for page in self._pages(self.pacs.instance_pages(self.query, self.page), stop):
            missing += [i for i in page if i.sop_uid not in held and i.sop_uid not in present]
            present.update(i.sop_uid for i in page)
        return present, missing if self.finds_missing else []

    def _still_there(self, sop_uid: str) -> bool:
        return self.pacs.has_instance(self._instances[sop_uid])


class OrthancReconciler(Reconciler):
    """Orthanc: its instance ids (REST /instances), compared with the ids of the indexed rows; finds
    deletions only (the change feed brings every instance it still holds)."""

    def __init__(self, feed: OrthancChanges, bucket: TokenBucket, page: int = ORTHANC_PAGE):
        super().__init__(bucket)
        self.feed, self.page = feed, page

    def _held(self, listed: list[Instance], rows: dict[str, dict]) -> dict[str, str]:
        held = {}
        for instance in listed:
            row = rows.get(instance.sop_uid)
            if row is not None:  # an instance that could not be read is in no index
                held.update(dict.fromkeys(instance_ids(row), instance.sop_uid))
        return held

    def _listing(self, held: dict[str, str], stop: threading.Event) -> tuple[set[str], list[Instance]]:
        present: set[str] = set()
        for page in self._pages(self._id_pages(), stop):
            present.update(page)
        return present, []

    def _id_pages(self) -> Iterator[list[str]]:
        since = 0
        while ids := self.feed.instance_ids(since, self.page):
            since += len(ids)
            yield ids

    def _still_there(self, sop_uid: str) -> bool:
        return self.feed.has_instance(sop_uid)


def instance_ids(row: dict) -> tuple[str, ...]:
    """The Orthanc id of an indexed row's instance. An instance without a PatientID is indexed under its
    study's UID as patient id (cxr.dicomweb.record), while Orthanc hashed an empty one: both are given."""
    patient, study = row.get("patient_id", ""), row.get("study_instance_uid", "")
    uids = (row.get("series_instance_uid", ""), row.get("sop_instance_uid") or row.get("image_id", ""))
    ids = (orthanc_id(patient, study, *uids),)
    return ids + ((orthanc_id("", study, *uids),) if patient == study else ())
