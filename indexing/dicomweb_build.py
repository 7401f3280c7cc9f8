"""`cxr index build --dicomweb` and `cxr index follow`: index a PACS's chest X-rays over DICOMweb.

Incremental: every encoded vector is kept, with its index row, in a cache beside the index
(<output_dir>.dicomweb/, indexing.chunk_cache's chunks keyed by SOPInstanceUID), so a rebuild fetches only
instances not encoded yet and a killed build resumes where it stopped. The index itself is then
written from the cache through the same writer as a build from disk (FAISS files or Milvus) and
replaces the old one at once; a running gateway picks it up by itself.

Fetching is I/O: a few WADO-RS requests are in flight on threads while worker processes decode
(cxr.images, as for files) and batches go to Triton through indexing.build's pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections import deque
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
from cxr.errors import UnavailableError
from cxr.reports.intake import ReportIntake
from cxr.settings import Settings
from cxr.store import faiss_files
from cxr.store.errors import StoreUnavailableError
from cxr.triton.errors import TritonError
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient
from indexing.build import BuildOptions, NothingToIndexError, decode_bytes, decoder_pool, encode_stream, write_index
from indexing.chunk_cache import ChunkCache
from indexing.pacs_reports import ReportReader

CACHE_SUFFIX = ".dicomweb"
LISTED_FILE = "listed.jsonl"
FOLLOW_FILE = "follow.json"
FETCH_THREADS = 4  # WADO-RS requests in flight
QIDO_OVERLAP_DAYS = 1  # a QIDO follower lists studies from the day before its last pass (time zones, late stores)
# A follower's pass that fails because a neighbour is down (the PACS, Triton, the vector store: an
# UnavailableError) is tried again after BACKOFF_FIRST_S, the wait doubling up to BACKOFF_MAX_S, so a
# restart of a neighbour costs seconds and a long outage one request a minute. Each wait is shortened by
# up to BACKOFF_JITTER of itself, so that followers of one PACS do not all come back at the same moment.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.25


def cache_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + CACHE_SUFFIX)


class PacsCache(ChunkCache):
    """The chunk cache of vectors and index rows keyed by SOPInstanceUID, thrown away when the model or
    its export changes; beside it, the instances the index holds (in order) and where a follower stopped."""

    def __init__(self, directory: Path, model: ExportedModel):
        super().__init__(directory, {"model": model.name, "export_sha256": model.export_sha256}, key="sop",
                         keeps_rows=True)
        self.listed = [Instance(*json.loads(line)) for line in self.lines(LISTED_FILE)]

    def set_listed(self, instances: list[Instance]) -> None:
        """What the index holds from now on: a build's listing (written whole, then renamed)."""
        self.replace_file(LISTED_FILE, "".join(_listing_line(i) + "\n" for i in instances))
        self.listed = list(instances)

    def unencoded(self) -> list[Instance]:
        """Listed instances neither encoded nor skipped: those a pass listed before an outage (or a kill)
        stopped it, left for the next pass to encode."""
        return [i for i in self.listed if i.sop_uid not in self.vectors and i.sop_uid not in self.skipped]

    def extend_listed(self, instances: list[Instance]) -> list[Instance]:
        """Add instances a follower found; returns those not listed before."""
        known = {i.sop_uid for i in self.listed}
        new = [i for i in dict.fromkeys(instances) if i.sop_uid not in known]
        self.append_lines(LISTED_FILE, map(_listing_line, new))
        self.listed += new
        return new

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


def encode_new(pacs: DicomWeb, cache: PacsCache, instances: list[Instance], model: ExportedModel,
               settings: Settings, options: BuildOptions) -> Counts:
    """Fetch, decode and encode the instances the cache lacks."""
    todo = [i for i in dict.fromkeys(instances) if i.sop_uid not in cache.vectors]
    kept, added_before = len(instances) - len(todo), cache.added
    client = TowerClient(connections(settings), model.image, model.text, model.max_batch_size)
    bar = tqdm(total=len(instances), initial=kept, unit="img", desc=f"indexing {model.name} from the PACS",
               disable=not options.progress or not todo, dynamic_ncols=True)
    bar.set_postfix(kept=kept, refresh=False)
    try:
        if todo:
            with decoder_pool(options.workers) as pool:
                decoded = _fetched_and_decoded(pacs, cache, todo, pool, model.image_size, options.workers)
                encode_stream(decoded, client, options, bar, cache.add_batch, cache.add_skipped)
    finally:
        bar.close()
        client.close()
    new = cache.added - added_before
    return Counts(new, kept, len(todo) - new)


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
    interval_s: float = 60.0
    batch: int = 256  # new instances per index swap
    once: bool = False  # one pass (tests, cron)
    orthanc_url: str = ""  # Orthanc's REST root; default: the DICOMweb URL without /dicom-web


class Follower:
    """Keeps an index up to date with a PACS: Orthanc's change feed where there is one, else QIDO
    listings of recent studies. Each batch of new instances goes through the incremental build and
    the index is swapped; the feed position is saved after each swap, so a restart goes on from there."""

    def __init__(self, pacs: DicomWeb, query: Query, model: ExportedModel, settings: Settings, output_dir: Path,
                 options: BuildOptions = BuildOptions(), follow: FollowOptions = FollowOptions(), backend=None,
                 log: Callable[[str], None] = print, intake: Callable[[], ReportIntake] | None = None):
        """`intake`: as build_from_pacs's; the SR of each study with new instances are read too."""
        self.pacs, self.query, self.model, self.settings = pacs, query, model, settings
        self.output_dir, self.options, self.follow, self.backend, self.log = output_dir, options, follow, backend, log
        pacs.check()
        self.cache = PacsCache(cache_dir(output_dir), model)
        self.reports = ReportReader(pacs, self.cache.directory, intake, options.progress) if intake else None
        changes = OrthancChanges(follow.orthanc_url or OrthancChanges.root_of(pacs.url), pacs.session)
        self.feed = changes if changes.is_orthanc() else None

    def run(self, stop: threading.Event | None = None, backoff: Backoff | None = None) -> None:
        """Pass after pass until `stop` is set (or once); Ctrl-C stops it between two saved states. A pass
        that fails because the PACS, Triton or the vector store is down is tried again with `backoff`
        (a Backoff logging to this follower's log) until it succeeds; with `once` it fails at once
        instead, since a one-shot run should not hang. Any other error stops the follower."""
        stop = stop or threading.Event()
        backoff = backoff or Backoff(self.log)
        state = self.cache.follow_state()
        while True:
            try:
                state = state or self._start()
                self._pass(state)
            except UnavailableError as exc:
                if self.follow.once:
                    raise
                if not backoff.wait(exc, stop):
                    return  # stopped while waiting: the saved state is that of the last successful swap
                continue
            backoff.recovered()
            if self.follow.once or stop.wait(self.follow.interval_s):
                return

    def _start(self) -> dict:
        """A full build first; the feed position is read before it, so nothing stored meanwhile is missed."""
        state = {"orthanc_seq": self.feed.last()} if self.feed else {}
        state["qido_since"] = _today()
        listed = self.pacs.instances(self.query)
        self.cache.set_listed(listed)
        self._swap(listed, "initial build")
        self._read_reports({i.study_uid for i in listed}, "initial build")
        self.cache.save_follow_state(state)
        return state

    def _pass(self, state: dict) -> None:
        self._swap(self.cache.unencoded(), "instances listed before an outage")
        if self.feed:
            self._orthanc_pass(state)
        else:
            self._qido_pass(state)

    def _orthanc_pass(self, state: dict) -> None:
        while True:
            changes, seq = self.feed.new_instances(state["orthanc_seq"], self.follow.batch)
            wanted = [c.instance for c in changes if c.instance and c.instance.sop_uid
                      and self.query.matches(c.modality, c.study_date)]
            self._swap(self.cache.extend_listed(wanted), f"changes up to {seq}")
            # An SR stored before its study's images is found when they come: every study touched is looked at.
            indexed = {i.study_uid for i in self.cache.listed}
            self._read_reports({c.instance.study_uid for c in changes if c.instance} & indexed, f"changes up to {seq}")
            state["orthanc_seq"] = seq
            self.cache.save_follow_state(state)
            if len(changes) < self.follow.batch:
                return

    def _qido_pass(self, state: dict) -> None:
        started = _today()
        since = max(self.query.since, _days_before(state.get("qido_since", ""), QIDO_OVERLAP_DAYS))
        listed = self.pacs.instances(replace(self.query, since=since, limit=0))
        known = {i.sop_uid for i in self.cache.listed}
        new = [i for i in listed if i.sop_uid not in known]
        for start in range(0, len(new), self.follow.batch):
            self._swap(self.cache.extend_listed(new[start:start + self.follow.batch]), f"studies since {since}")
        self._read_reports({i.study_uid for i in listed}, f"studies since {since}")
        state["qido_since"] = started
        self.cache.save_follow_state(state)

    def _read_reports(self, studies: set[str], what: str) -> None:
        if self.reports is not None and studies and (counts := self.reports.read_studies(sorted(studies))):
            self.log(f"{what}: {counts}")

    def _swap(self, instances: list[Instance], what: str) -> None:
        """Encode the new instances and write the index again: the gateway reloads it by itself."""
        if not instances:
            return
        counts = encode_new(self.pacs, self.cache, instances, self.model, self.settings, self.options)
        if not any(sop in self.cache.vectors for sop in (i.sop_uid for i in self.cache.listed)):
            self.log(f"{what}: {counts}; nothing readable to index yet")
            return
        written = write_from_cache(self.cache, self.model, self.output_dir, self.options, self.backend,
                                   self.pacs.shown)
        self.log(f"{what}: {counts}; the index holds {written['count']} images")


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
