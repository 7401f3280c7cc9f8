"""`cxr index build --dicomweb` and `cxr index follow`: index a PACS's chest X-rays over DICOMweb.

Incremental: every encoded vector is kept, with its index row, in a cache beside the index
(<output_dir>.dicomweb/, indexing.chunk_cache's chunks keyed by SOPInstanceUID), so a rebuild fetches only
instances not encoded yet and a killed build resumes where it stopped. A build's index is then
written from the cache through the same writer as a build from disk (FAISS files or Milvus) and
replaces the old one at once; a running gateway picks it up by itself.

A follower writes the whole index once, when it starts; after that each batch of changes (instances
stored, deleted, or stored again in place) is one commit to the index in service (StoreBackend.apply),
which the gateway takes in at its next refresh; past `index_compact_rows` rows pending, the follower
folds the commits into the build in the background (StoreBackend.compact). Deletions in Orthanc come
pushed by its Lua script (indexing.pacs_notices) when the follower listens for them, and are committed
at once; reconciliations (indexing.pacs_reconcile) find those no notice told of.

Fetching is I/O: a few WADO-RS requests are in flight on threads while worker processes decode
(cxr.images, as for files) and batches go to Triton through indexing.build's pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr.catalog import ExportedModel
from cxr.dicomweb import (
    DicomWeb,
    DicomWebError,
    Instance,
    InstanceFetchError,
    NoMatchingInstancesError,
    OrthancChanges,
    Query,
    part10,
    record,
)
from cxr.errors import CxrError, FailedPreconditionError, UnavailableError
from cxr.reports.intake import ReportIntake
from cxr.reports.ledger import ReportLedger
from cxr.settings import Settings
from cxr.store import faiss_files
from cxr.store.errors import IndexMissingError, StoreUnavailableError
from cxr.store.interface import Change, Committed, StoreBackend, StudyIdentity
from cxr.triton.errors import TritonError
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient
from indexing.build import BuildOptions, NothingToIndexError, decode_bytes, decoder_pool, encode_stream, write_index
from indexing.chunk_cache import ChunkCache
from indexing.pacs_notices import Notice, NoticeSource, OrthancIds
from indexing.pacs_reconcile import OrthancReconciler, QidoReconciler, Reconciled, Stopped, TokenBucket, instance_ids
from indexing.pacs_reports import ReportReader

CACHE_SUFFIX = ".dicomweb"
LISTED_FILE = "listed.jsonl"
FOLLOW_FILE = "follow.json"
FETCH_THREADS = 4  # WADO-RS requests in flight
QIDO_OVERLAP_DAYS = 1  # a QIDO follower lists studies from the day before its last pass (time zones, late stores)
# How often a follower looks: Orthanc's feed costs one small REST call a look, and a new instance should
# be searchable within seconds; a QIDO-RS look lists every study since yesterday, so it is rarer.
ORTHANC_INTERVAL_S = 1.0
QIDO_INTERVAL_S = 60.0
RECONCILE_S = 600.0  # at least this long between two reconciliations that nothing asked for
QIDO_REQUESTS_PER_MIN = 60.0  # the pace of a reconciliation's listing (indexing.pacs_reconcile)
# A follower's pass that fails because a neighbour is down (the PACS, Triton, the vector store: an
# UnavailableError) is tried again after BACKOFF_FIRST_S, the wait doubling up to BACKOFF_MAX_S, so a
# restart of a neighbour costs seconds and a long outage one request a minute. Each wait is shortened by
# up to BACKOFF_JITTER of itself, so that followers of one PACS do not all come back at the same moment.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.25
# With deletion notices, Orthanc holding fewer instances than the feed and the notices account for asks
# for a reconciliation only once no notice came for NOTICE_GRACE_S: Orthanc sends them after it answers
# the deletion, one at a time (a patient of thousands of instances takes seconds).
NOTICE_GRACE_S = 5.0
NOTICE_POLL_S = 0.1  # between two passes, how often the stop event is looked at while notices are awaited

log = logging.getLogger(__name__)


def cache_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + CACHE_SUFFIX)


class PacsCache(ChunkCache):
    """The chunk cache of vectors and index rows keyed by SOPInstanceUID, thrown away when the model or
    its export changes; beside it, the instances the index holds (in order) and where a follower stopped.

    The listing (listed.jsonl) is appended to: a line [study, series, sop] lists an instance, a line
    {"unlisted": sop} takes it out (deleted from the PACS); it is written whole again when it opens with
    more lines taken out than left in."""

    def __init__(self, directory: Path, model: ExportedModel):
        super().__init__(directory, {"model": model.name, "export_sha256": model.export_sha256}, key="sop",
                         keeps_rows=True)
        self._listed: dict[str, Instance] = {}
        self._studies: Counter[str] = Counter()
        lines = self.lines(LISTED_FILE)
        for line in lines:
            item = json.loads(line)
            if isinstance(item, dict):
                self._unlist(item["unlisted"])
            else:
                self._list(Instance(*item))
        if len(lines) > 2 * len(self._listed):
            self.set_listed(self.listed)

    @property
    def listed(self) -> list[Instance]:
        return list(self._listed.values())

    def is_listed(self, sop_uid: str) -> bool:
        return sop_uid in self._listed

    def has_study(self, study_uid: str) -> bool:
        """Whether an instance of the study is listed."""
        return self._studies[study_uid] > 0

    def set_listed(self, instances: list[Instance]) -> None:
        """What the index holds from now on: a build's listing (written whole, then renamed)."""
        self.replace_file(LISTED_FILE, "".join(_listing_line(i) + "\n" for i in instances))
        self._listed.clear()
        self._studies.clear()
        for instance in instances:
            self._list(instance)

    def unencoded(self) -> list[Instance]:
        """Listed instances neither encoded nor skipped: those a pass listed before an outage (or a kill)
        stopped it, left for the next pass to encode."""
        return [i for i in self._listed.values() if i.sop_uid not in self.vectors and i.sop_uid not in self.skipped]

    def extend_listed(self, instances: list[Instance]) -> list[Instance]:
        """Add instances a follower found; returns those not listed before."""
        new = [i for i in dict.fromkeys(instances) if i.sop_uid not in self._listed]
        self.append_lines(LISTED_FILE, map(_listing_line, new))
        for instance in new:
            self._list(instance)
        return new

    def unlist(self, sop_uids) -> None:
        """Take out instances deleted from the PACS: stored again, they are found as new."""
        gone = [sop for sop in dict.fromkeys(sop_uids) if sop in self._listed]
        self.append_lines(LISTED_FILE, (json.dumps({"unlisted": sop}) for sop in gone))
        for sop in gone:
            self._unlist(sop)

    def _list(self, instance: Instance) -> None:
        if instance.sop_uid not in self._listed:
            self._studies[instance.study_uid] += 1
        self._listed[instance.sop_uid] = instance

    def _unlist(self, sop_uid: str) -> None:
        instance = self._listed.pop(sop_uid, None)
        if instance is not None:
            self._studies[instance.study_uid] -= 1

    def follow_state(self) -> dict:
        path = self.directory / FOLLOW_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_follow_state(self, state: dict) -> None:
        self.replace_file(FOLLOW_FILE, json.dumps(state))


def _listing_line(instance: Instance) -> str:
    return json.dumps([instance.study_uid, instance.series_uid, instance.sop_uid])


@dataclass(frozen=True)
class Counts:
    """One pass: instances encoded now, found encoded already, and that could not be read."""
    new: int
    kept: int
    skipped: int

    def __str__(self) -> str:
        return f"{self.new} new, {self.kept} kept, {self.skipped} skipped"


def build_from_pacs(pacs: DicomWeb, query: Query, model: ExportedModel, settings: Settings, output_dir: Path,
                    options: BuildOptions = BuildOptions(), backend=None,
                    intake: Callable[[], ReportIntake] | None = None) -> dict:
    """Index the instances `query` lists on the PACS; only those not in the cache are fetched. With
    `intake` (which opens the report intake when the first report is found), the SR reports of the
    listed studies go to the report ledger too. Returns the written manifest with `new`, `kept` and
    `skipped` counts of this build, and with an intake `reports` (a pacs_reports.ReportCounts's fields)."""
    pacs.check()
    cache = PacsCache(cache_dir(output_dir), model)
    listed = pacs.instances(query)
    if not listed:
        raise NoMatchingInstancesError(f"no instance on {pacs.shown} matches {query.describe()}: widen --modality or "
                                       "--since, or check that the PACS holds the studies. Nothing was written.")
    cache.set_listed(listed)
    counts = encode_new(pacs, cache, listed, model, settings, options)
    reports = {}
    if intake is not None:
        reader = ReportReader(pacs, cache.directory, intake, options.progress)
        reports = {"reports": vars(reader.read_studies(i.study_uid for i in listed))}
    return dict(write_from_cache(cache, model, output_dir, options, backend, pacs.shown), **vars(counts), **reports)


class Encoder:
    """The decoder processes and the Triton client that encode a PACS's instances, made when first
    needed and kept until closed. A follower keeps one across its batches: starting the spawned pool
    costs about 0.9 CPU-seconds on a 2-core machine, which made per batch, at one batch a second, took
    half the machine from the searches it shares it with."""

    def __init__(self, model: ExportedModel, settings: Settings, options: BuildOptions):
        self.model, self.settings, self.options = model, settings, options
        self._pool = None
        self._client: TowerClient | None = None

    def encode_new(self, pacs: DicomWeb, cache: PacsCache, instances: list[Instance], refetch: bool = False) -> Counts:
        """Fetch, decode and encode the instances the cache lacks (with `refetch`, every one: the PACS may
        hold another version of an instance it stored again)."""
        model, options = self.model, self.options
        todo = [i for i in dict.fromkeys(instances) if refetch or i.sop_uid not in cache.vectors]
        kept, added_before = len(instances) - len(todo), cache.added
        bar = tqdm(total=len(instances), initial=kept, unit="img", desc=f"indexing {model.name} from the PACS",
                   disable=not options.progress or not todo, dynamic_ncols=True)
        bar.set_postfix(kept=kept, refresh=False)
        try:
            if todo:
                decoded = _fetched_and_decoded(pacs, cache, todo, self._decoders(), model.image_size, options.workers)
                encode_stream(decoded, self._triton(), options, bar, cache.add_batch, cache.add_skipped)
        finally:
            bar.close()
        new = cache.added - added_before
        return Counts(new, kept, len(todo) - new)

    def close(self) -> None:
        """A second close does nothing; the next encode_new starts them again."""
        pool, client, self._pool, self._client = self._pool, self._client, None, None
        try:
            if client is not None:
                client.close()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decoders(self):
        if self._pool is None:
            self._pool = decoder_pool(self.options.workers)
        return self._pool

    def _triton(self) -> TowerClient:
        if self._client is None:
            model = self.model
            self._client = TowerClient(connections(self.settings), model.image, model.text, model.max_batch_size)
        return self._client


def encode_new(pacs: DicomWeb, cache: PacsCache, instances: list[Instance], model: ExportedModel,
               settings: Settings, options: BuildOptions, refetch: bool = False) -> Counts:
    """Encoder.encode_new with an encoder of its own, closed on return (one build, not a follower)."""
    with Encoder(model, settings, options) as encoder:
        return encoder.encode_new(pacs, cache, instances, refetch)


def _fetch(pacs: DicomWeb, cache: PacsCache, instance: Instance) -> tuple[bytes | None, str]:
    """(Part-10 bytes, '') or (None, reason); the instance's index row goes to the cache. A PACS that
    is down or refuses us raises: that is not one bad instance, and the build stops (and resumes)."""
    try:
        dataset = pacs.dataset(instance)
        data = part10(dataset)
        cache.add_row(instance.sop_uid, record(dataset).metadata())
        return data, ""
    except InstanceFetchError as exc:
        return None, f"fetch failed: {exc}"


def _fetched_and_decoded(pacs, cache, todo: list[Instance], pool, size: int, workers: int) -> Iterator[tuple]:
    """(sop, pixels or None, reason) in `todo`'s order: FETCH_THREADS fetches in flight, decodes in the
    worker pool, a bounded number of each so memory holds a few images, not the archive."""
    work = iter(todo)
    fetching: deque[tuple[Instance, Future]] = deque()
    decoding: deque = deque()
    fetchers = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="wado")
    try:
        while True:
            while len(fetching) < 2 * FETCH_THREADS and (instance := next(work, None)) is not None:
                fetching.append((instance, fetchers.submit(_fetch, pacs, cache, instance)))
            while fetching and len(decoding) < 2 * workers and (fetching[0][1].done() or not decoding):
                instance, future = fetching.popleft()
                data, reason = future.result()
                decoding.append(pool.apply_async(decode_bytes, (instance.sop_uid, data, size)) if data is not None
                                else _Ready((instance.sop_uid, None, reason)))
            if not decoding:
                return
            yield decoding.popleft().get()
    finally:
        fetchers.shutdown(wait=True, cancel_futures=True)


class _Ready:
    """A result already known, beside the pool's AsyncResults."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def write_from_cache(cache: PacsCache, model: ExportedModel, output_dir: Path, options: BuildOptions, backend,
                     source: str) -> dict:
    """The index of the listed instances that have vectors, swapped in at once."""
    held = [i.sop_uid for i in cache.listed if i.sop_uid in cache.vectors]
    skipped = [(i.wado_path, cache.skipped[i.sop_uid]) for i in cache.listed
               if i.sop_uid not in cache.vectors and i.sop_uid in cache.skipped]
    if not held:
        report = output_dir.with_name(output_dir.name + ".skipped.csv")
        faiss_files.write_skipped(report, skipped)
        raise NothingToIndexError(f"none of the {len(cache.listed)} instances listed on {source} could be read; the "
                                  f"reasons are in {report}. Nothing was written: any existing index in {output_dir} "
                                  "is kept.")
    vectors = np.stack([cache.vectors[sop] for sop in held]).astype(np.float32)
    manifest = {"model": model.name, "dim": model.embed_dim, "source": source, "export_sha256": model.export_sha256,
                "archive_images": len(cache.listed)}
    return write_index(vectors, [cache.rows[sop] for sop in held], skipped, manifest, output_dir, options, backend)


@dataclass(frozen=True)
class FollowOptions:
    interval_s: float | None = None  # between two looks; None: ORTHANC_INTERVAL_S on Orthanc, else QIDO_INTERVAL_S
    batch: int = 256  # instances per commit
    once: bool = False  # one pass (tests, cron)
    orthanc_url: str = ""  # Orthanc's REST root; default: the DICOMweb URL without /dicom-web
    qido_requests_per_min: float = QIDO_REQUESTS_PER_MIN  # a reconciliation's pace
    reconcile_s: float = RECONCILE_S


class Follower:
    """Keeps an index up to date with a PACS: Orthanc's change feed where there is one, else QIDO
    listings of recent studies, and now and then a reconciliation (indexing.pacs_reconcile) for what
    neither tells of: deletions, and on a PACS without a feed, instances stored into older studies.

    The index is written whole once (the first pass); each batch after that is one commit to it
    (StoreBackend.apply: the instances added or stored again, the instances deleted), and the feed
    position is saved after the commit, so a restart goes on from there. Orthanc's feed has no
    deletions: a pass that finds Orthanc holding fewer instances than the feed accounts for starts a
    reconciliation at once; otherwise one runs every `reconcile_s`. Reconciliations and compactions run
    on threads of their own, one of each at a time, while instances go on being indexed (inline with
    `once`, so that one run leaves the index reconciled).

    With `notices` (Orthanc's deletion notices, indexing.pacs_notices), the notices that come are
    committed at once, one commit for those taken together, between passes and between the batches of a
    pass: each names instances through their Orthanc ids (OrthancIds, from the listed rows), and those
    Orthanc confirms gone (one /tools/find) are deleted. Orthanc's count then falls by what the notices
    told of, and a reconciliation is asked for only when it falls further."""

    def __init__(self, pacs: DicomWeb, query: Query, model: ExportedModel, settings: Settings, output_dir: Path,
                 options: BuildOptions = BuildOptions(), follow: FollowOptions = FollowOptions(),
                 backend: StoreBackend | None = None, log: Callable[[str], None] = print,
                 intake: Callable[[], ReportIntake] | None = None, notices: NoticeSource | None = None):
        """`backend`: where the index lives, as for write_index (None: FAISS files in `output_dir`).
        `intake`: as build_from_pacs's; the SR of each study with new instances are read too.
        `notices`: Orthanc's deletion notices (a DeletionListener), on Orthanc only."""
        self.pacs, self.query, self.model, self.settings = pacs, query, model, settings
        self.output_dir, self.options, self.follow, self.backend, self.log = output_dir, options, follow, backend, log
        self.store = backend or _faiss_backend(settings, output_dir, options)
        pacs.check()
        self.cache = PacsCache(cache_dir(output_dir), model)
        self.reports = ReportReader(pacs, self.cache.directory, intake, options.progress) if intake else None
        changes = OrthancChanges(follow.orthanc_url or OrthancChanges.root_of(pacs.url), pacs.session)
        self.feed = changes if changes.is_orthanc() else None
        if notices is not None and self.feed is None:
            raise FailedPreconditionError(
                f"--deletions-listen: deletion notices come from Orthanc's Lua callbacks, and {pacs.shown} does not "
                "answer as Orthanc (REST /system); give its REST root with --orthanc-url, or drop --deletions-listen")
        self.notices = notices
        self._notices: list[Notice] = []  # taken, not yet committed (kept through an outage)
        self._notice_at = 0.0  # time.time() of the last notice taken
        self._ids: OrthancIds | None = None  # the listed instances' Orthanc ids, with notices (_orthanc_ids)
        self.interval_s = follow.interval_s or (ORTHANC_INTERVAL_S if self.feed else QIDO_INTERVAL_S)
        bucket = TokenBucket(follow.qido_requests_per_min)
        self.reconciler = OrthancReconciler(self.feed, bucket) if self.feed else QidoReconciler(pacs, query, bucket)
        self._reconciling: _Background | None = None
        self._halt = threading.Event()  # ends a reconciliation under way when the follower stops
        self._added_while_reconciling: set[str] = set()  # committed since the reconciliation's listing began
        self._retry_reconcile_at = 0.0  # after a failed reconciliation
        self._compacting: _Background | None = None
        self._encoder = Encoder(model, settings, options)  # kept across batches; closed when run returns
        self._resume = True  # the first pass encodes what an older follower listed and did not index

    def run(self, stop: threading.Event | None = None, backoff: Backoff | None = None) -> None:
        """Pass after pass until `stop` is set (or once); Ctrl-C stops it between two saved states. A pass
        that fails because the PACS, Triton or the vector store is down is tried again with `backoff`
        (a Backoff logging to this follower's log) until it succeeds; with `once` it fails at once
        instead, since a one-shot run should not hang. Any other error stops the follower. A compaction
        under way is waited for before it returns."""
        stop = stop or threading.Event()
        backoff = backoff or Backoff(self.log)
        state = self.cache.follow_state()
        self._halt.clear()
        try:
            while True:
                try:
                    state = state or self._start()
                    self._pass(state, stop)
                    backoff.recovered()
                    if self.follow.once or self._between_passes(state, stop):
                        return
                except UnavailableError as exc:
                    if self.follow.once:
                        raise
                    if not backoff.wait(exc, stop):
                        return  # stopped while waiting: the saved state is that of the last successful commit
        finally:
            self._encoder.close()
            self._finish_background()

    def _between_passes(self, state: dict, stop: threading.Event) -> bool:
        """Wait `interval_s` for the next pass, committing deletion notices as they come; True when stopped."""
        if self.notices is None:
            return stop.wait(self.interval_s)
        deadline = time.monotonic() + self.interval_s
        while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
            self._apply_notices(state, min(left, NOTICE_POLL_S))
        return stop.is_set()

    def _start(self) -> dict:
        """A full build first; the feed position is read before it, so nothing stored meanwhile is missed."""
        state = {"orthanc_seq": self.feed.last()} if self.feed else {}
        state["qido_since"] = _today()
        state["reconciled_at"] = time.time()  # the build's listing is the first reconciliation
        listed = self.pacs.instances(self.query)
        self.cache.set_listed(listed)
        self._ids = None
        self._swap(listed, "initial build")
        self._read_reports({i.study_uid for i in listed}, "initial build")
        self.cache.save_follow_state(state)
        return state

    def _pass(self, state: dict, stop: threading.Event) -> None:
        if self.notices is not None:
            self._orthanc_ids()
        if self._resume:
            self._commit(self.cache.unencoded(), (), "instances listed before an outage")
            self._resume = False
        if self.feed:
            self._orthanc_pass(state)
        else:
            self._qido_pass(state)
        self._reconcile(state, stop)

    def _orthanc_pass(self, state: dict) -> None:
        while True:
            self._apply_notices(state)  # between two batches, never between a batch's fetch and its commit
            changes, seq = self.feed.new_instances(state["orthanc_seq"], self.follow.batch)
            wanted = [c.instance for c in changes if c.instance and c.instance.sop_uid
                      and self.query.matches(c.modality, c.study_date)]
            # An instance already indexed has a new event when it was stored again in place: fetched again.
            self._commit(wanted, (), f"changes up to {seq}", refetch=True)
            # An SR stored before its study's images is found when they come: every study touched is looked at.
            studies = {c.instance.study_uid for c in changes if c.instance}
            self._read_reports({s for s in studies if self.cache.has_study(s)}, f"changes up to {seq}")
            # Each NewInstance event read was one more instance in Orthanc (_count_orthanc).
            state.update(orthanc_seq=seq, orthanc_seen=state.get("orthanc_seen", 0) + len(changes))
            # Saved after the commit: a crash between the two replays the batch, which adds nothing twice
            # (apply adds or replaces by image_id, and the feed's instances are fetched again anyway).
            self.cache.save_follow_state(state)
            if len(changes) < self.follow.batch:
                break
        self._count_orthanc(state)

    def _count_orthanc(self, state: dict) -> None:
        """Orthanc's feed tells of no deletion, but its count of instances does: fewer than when last
        counted plus the NewInstance events read since, less the instances deletion notices told of, means
        some went unannounced (or were stored again in place without a notice). The count is compared only
        when no instance came since the feed was read (the feed's last sequence number is still the one
        read up to: deletions remove entries, never add one). With notices, a shortfall waits until none
        came for NOTICE_GRACE_S (they may be on their way); the counts are kept meanwhile."""
        count = self.feed.count()
        if self.feed.last() > state["orthanc_seq"]:
            return  # an instance came meanwhile: counted, not read; the next pass compares
        expected = state.get("orthanc_count", 0) + state.get("orthanc_seen", 0) - state.get("orthanc_notified", 0)
        if "orthanc_count" not in state:
            expected = count  # the first count: what is compared with from now on
        if count < expected and self.notices is not None:
            short_since = state.setdefault("orthanc_short_since", time.time())
            if time.time() - max(short_since, self._notice_at) < NOTICE_GRACE_S:
                self.cache.save_follow_state(state)
                return
        if count < expected:
            state["deletions_seen_at"] = time.time()
        state.pop("orthanc_short_since", None)
        state.update(orthanc_count=count, orthanc_seen=0, orthanc_notified=0)
        self.cache.save_follow_state(state)

    def _apply_notices(self, state: dict, wait_s: float = 0.0) -> None:
        """Commit the deletions the notices waiting tell of (waiting up to `wait_s` for one), in one commit:
        the instances they name that Orthanc confirms gone. An instance stored again in place has a notice
        too, which may come after the feed brought its new copy: it is kept. Instance notices, of indexed
        instances or not, are counted for _count_orthanc."""
        if self.notices is None:
            return
        if taken := self.notices.take(0.0 if self._notices else wait_s):
            self._notices += taken
            self._notice_at = time.time()
        if not self._notices:
            return
        named, unknown = self._orthanc_ids().sops(self._notices)
        if unknown:
            log.debug("%d deletion notices name nothing the follower lists: ignored", unknown)
        held = self.feed.holding(named) if named else set()
        gone = [sop for sop in named if held.isdisjoint(instance_ids(self.cache.rows[sop]))]
        if gone:
            self._commit([], gone, "deleted in Orthanc (notices)")
        state["orthanc_notified"] = (state.get("orthanc_notified", 0)
                                     + sum(n.resource_type == "Instance" for n in self._notices))
        self._notices = []
        self.cache.save_follow_state(state)

    def _qido_pass(self, state: dict) -> None:
        started = _today()
        since = max(self.query.since, _days_before(state.get("qido_since", ""), QIDO_OVERLAP_DAYS))
        listed = self.pacs.instances(replace(self.query, since=since, limit=0))
        new = [i for i in listed if not self.cache.is_listed(i.sop_uid)]
        for start in range(0, len(new), self.follow.batch):
            self._commit(new[start:start + self.follow.batch], (), f"studies since {since}")
        self._read_reports({i.study_uid for i in listed}, f"studies since {since}")
        state["qido_since"] = started
        self.cache.save_follow_state(state)

    def _read_reports(self, studies: set[str], what: str) -> None:
        if self.reports is not None and studies and (counts := self.reports.read_studies(sorted(studies))):
            self.log(f"{what}: {counts}")

    def _swap(self, instances: list[Instance], what: str) -> None:
        """The first pass: encode the listed instances and write the whole index (the gateway reloads it)."""
        if not instances:
            return
        counts = self._encoder.encode_new(self.pacs, self.cache, instances)
        self._write_whole(f"{what}: {counts}")

    def _write_whole(self, what: str) -> None:
        if not any(sop in self.cache.vectors for sop in (i.sop_uid for i in self.cache.listed)):
            self.log(f"{what}; nothing readable to index yet")
            return
        written = write_from_cache(self.cache, self.model, self.output_dir, self.options, self.backend,
                                   self.pacs.shown)
        self.log(f"{what}; the index holds {written['count']} images")

    def _commit(self, instances: list[Instance], gone, what: str, refetch: bool = False) -> Committed | None:
        """Encode `instances` (those the cache lacks; with `refetch`, all) and commit them to the index in
        service, with the instances of `gone` (SOP UIDs: a PACS build's image ids) deleted; then list
        them (and take out those gone), so that what is listed is what was committed."""
        instances = list(dict.fromkeys(instances))
        if instances:
            self._encoder.encode_new(self.pacs, self.cache, instances, refetch=refetch)
        sops = [i.sop_uid for i in instances]
        held = [sop for sop in sops if sop in self.cache.vectors and sop not in self.cache.skipped]
        # Indexed before, unreadable as stored again (or gone before it could be fetched): out of the index.
        unreadable = [sop for sop in sops if sop in self.cache.skipped and sop in self.cache.vectors]
        vectors = np.stack([self.cache.vectors[sop] for sop in held]).astype(np.float32) if held else None
        change = Change(vectors, tuple(self.cache.rows[sop] for sop in held),
                        image_ids=tuple(dict.fromkeys([*gone, *unreadable])), export_sha256=self.model.export_sha256)
        try:
            committed = self.store.apply(self.model.name, change) if change else None
        except IndexMissingError:  # nothing was readable until now: the first index is written whole
            committed = None
            self._list(instances, gone)
            self._write_whole(what)
        else:
            self._list(instances, gone)
        if committed is not None:
            self.log(f"{what}: +{committed.added} ~{committed.replaced} -{committed.deleted}, "
                     f"generation {committed.generation}")
            self._announce(change.rows)
            self._compact_when_due()
        return committed

    def _announce(self, rows) -> None:
        """Tell the report ledger the studies just indexed: reports that waited for them are attached by
        the gateway at its next look (ReportLedger.add_studies). No ledger, no report waits."""
        path = self.settings.reports_path(self.model.name)
        if not rows or not path.is_file():
            return
        with ReportLedger(path) as ledger:
            ledger.add_studies({StudyIdentity(row.get("study_uid", ""), row.get("study_instance_uid", ""),
                                              row.get("accession_number", ""), row.get("patient_id", ""))
                                for row in rows})

    def _orthanc_ids(self) -> OrthancIds:
        """The Orthanc ids of the listed instances: computed from their rows when first needed (at the
        first pass, so that the first notice does not wait for it), then kept up to date by _list."""
        if self._ids is None:
            self._ids = OrthancIds()
            for instance in self.cache.listed:
                if (row := self.cache.rows.get(instance.sop_uid)) is not None:
                    self._ids.add(instance.sop_uid, row)
        return self._ids

    def _list(self, instances: list[Instance], gone) -> None:
        self.cache.extend_listed(instances)
        self.cache.unlist(gone)
        self._added_while_reconciling.update(i.sop_uid for i in instances)
        if self._ids is not None:
            for sop in gone:
                if (row := self.cache.rows.get(sop)) is not None:
                    self._ids.remove(sop, row)
            for instance in instances:
                if (row := self.cache.rows.get(instance.sop_uid)) is not None:
                    self._ids.add(instance.sop_uid, row)

    def _compact_when_due(self) -> None:
        """Past index_compact_rows rows pending, fold the commits into the build on a thread of its own."""
        if self._compacting is not None:
            if not self._compacting.done():
                return
            _, error = self._compacting.result()
            if error is not None:
                raise error  # not a CxrError (those are logged where they happen): a bug shows
        pending = self.store.pending(self.model.name)
        if pending < self.settings.index_compact_rows:
            return
        self.log(f"compacting the index: {pending} rows pending")
        self._compacting = _Background("compact", self._compact)

    def _compact(self) -> None:
        started = time.monotonic()
        try:
            self.store.compact(self.model.name)
        except CxrError as exc:  # the commits stay as they are; the next commit past the mark tries again
            self.log(f"compaction failed after {time.monotonic() - started:.1f} s: {exc}")
            return
        self.log(f"compacted the index in {time.monotonic() - started:.1f} s")

    def _reconcile(self, state: dict, stop: threading.Event) -> None:
        """Apply a reconciliation that ended; start one when asked for (Orthanc's count fell) or due."""
        if self._reconciling is not None:
            if not self._reconciling.done():
                return
            background, self._reconciling = self._reconciling, None
            self._reconciled(background.result(), state)
        now = time.time()
        asked = state.get("deletions_seen_at", -1.0) >= state.get("reconciled_at", 0.0)
        due = now - state.get("reconciled_at", 0.0) >= self.follow.reconcile_s
        if not (asked or due) or now < self._retry_reconcile_at:
            return
        self._added_while_reconciling = set()
        listed, rows = self.cache.listed, dict(self.cache.rows)
        if self.follow.once:
            self._reconciled(_Background.inline(lambda: self.reconciler.run(listed, rows, stop)), state)
        else:
            self._reconciling = _Background("reconcile", lambda: self.reconciler.run(listed, rows, self._halt))

    def _reconciled(self, outcome: tuple[Reconciled | None, Exception | None], state: dict) -> None:
        result, error = outcome
        if isinstance(error, Stopped):
            return
        if error is not None:
            if not isinstance(error, CxrError) or (self.follow.once and isinstance(error, UnavailableError)):
                raise error  # a bug shows; a one-shot run fails on an outage, as its pass would
            self._retry_reconcile_at = time.time() + self.follow.reconcile_s
            self.log(f"reconciliation with the PACS failed ({error}); trying again in {self.follow.reconcile_s:g} s")
            return
        self.log(f"reconciled with the PACS: {result}")
        # What was committed since the listing began is as the PACS had it then or later: kept.
        gone = [sop for sop in result.gone if sop not in self._added_while_reconciling]
        missing = [i for i in result.missing if not self.cache.is_listed(i.sop_uid)]
        self._commit([], gone, "instances deleted from the PACS")
        for start in range(0, len(missing), self.follow.batch):
            batch = missing[start:start + self.follow.batch]
            self._commit(batch, (), "instances the PACS holds that were not indexed")
            self._read_reports({i.study_uid for i in batch}, "instances the PACS holds that were not indexed")
        state["reconciled_at"] = result.started
        self.cache.save_follow_state(state)

    def _finish_background(self) -> None:
        """A compaction under way is waited for (a reconciliation is dropped: the next run lists again)."""
        self._halt.set()
        if self._reconciling is not None:
            self._reconciling.join()
        if self._compacting is not None and not self._compacting.done():
            self.log("waiting for the compaction under way to end")
            self._compacting.join()


class _Background:
    """A function run on a thread of its own: its (result, error) once done. The error is handed to the
    follower's thread, which logs what it expects (CxrError) and raises the rest."""

    def __init__(self, name: str, function: Callable[[], object]):
        self._outcome: tuple = (None, None)
        self._thread = threading.Thread(target=self._run, args=(function,), name=name, daemon=True)
        self._thread.start()

    @staticmethod
    def inline(function: Callable[[], object]) -> tuple:
        try:
            return function(), None
        except Exception as exc:  # noqa: BLE001 -- handed over, not swallowed: see the class docstring
            return None, exc

    def _run(self, function) -> None:
        self._outcome = self.inline(function)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> tuple:
        return self._outcome


def _faiss_backend(settings: Settings, output_dir: Path, options: BuildOptions) -> StoreBackend:
    """The FAISS files in `output_dir`, as write_index writes them when it is given no backend."""
    from cxr.store.faiss_backend import FaissBackend

    return FaissBackend(settings.index_dir, options.use_gpu, folder=output_dir)


class Backoff:
    """The waits of a follower while a neighbour is down: BACKOFF_FIRST_S doubling to BACKOFF_MAX_S,
    jittered; one log line when an outage starts (or the neighbour that is down changes), one when it ends."""

    def __init__(self, log: Callable[[str], None], first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S,
                 jitter: float = BACKOFF_JITTER, clock: Callable[[], float] = time.monotonic,
                 uniform: Callable[[], float] = random.random):
        self.log, self.first_s, self.max_s, self.jitter = log, first_s, max_s, jitter
        self.clock, self.uniform = clock, uniform
        self.down = ""  # the neighbour that is down, '' while none is
        self.since = 0.0
        self.delay = 0.0

    def wait(self, error: UnavailableError, stop: threading.Event) -> bool:
        """Wait before the next try after `error`; False when `stop` was set meanwhile."""
        down = neighbour(error)
        if not self.down:
            self.since, self.delay = self.clock(), self.first_s
        else:
            self.delay = min(2 * self.delay, self.max_s)
        if down != self.down:
            self.log(f"{down} unavailable ({error}): waiting, retrying with backoff up to {self.max_s:g} s")
            self.down = down
        return not stop.wait(self.delay * (1 - self.jitter * self.uniform()))

    def recovered(self) -> None:
        """A pass succeeded: the end of an outage, if there was one, is logged."""
        if self.down:
            self.log(f"{self.down} back after {self.clock() - self.since:.0f} s, going on")
            self.down = ""


def neighbour(error: UnavailableError) -> str:
    """Who is down, for the log."""
    if isinstance(error, TritonError):
        return "Triton"
    if isinstance(error, DicomWebError):
        return "the PACS"
    if isinstance(error, StoreUnavailableError):
        return "the vector store"
    return "a service the follower needs"


def _today() -> str:
    return dt.date.today().strftime("%Y%m%d")


def _days_before(date: str, days: int) -> str:
    if not date:
        return ""
    return (dt.datetime.strptime(date, "%Y%m%d").date() - dt.timedelta(days=days)).strftime("%Y%m%d")
