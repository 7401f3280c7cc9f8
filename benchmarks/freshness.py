"""`make bench-freshness`: how soon the living FAISS index serves what a PACS stores and stops serving what
is deleted, what ingesting costs searches, and what a commit and a compaction cost as the archive grows.

  python -m benchmarks.freshness [--sizes 100000,1000000] [--samples 20] [--load-seconds 20]
                                 [--added 2000] [--deleted 500]

cxr-mini is exported into a temporary repository and served by a real Triton. For each size:
1. Base: `cxr index synth` writes `size` synthetic images (IVF from IVF_FROM images, flat below); the real
   gateway serves them (its own process, rate limit off); a real Orthanc starts empty and `cxr index follow`
   (its defaults: Orthanc's change feed) follows it into that index, taking the deletion notices Orthanc
   pushes through deploy/orthanc/cxr-follow-deletions.lua (`--deletions-listen`), as deployed.
2. Searchable: NIH images, each a DICOM study of its own with new UIDs, stored by STOW-RS one at a time at
   random moments: seconds from the STOW response until SearchByImage with the same DICOM returns it. Then
   as many more in one STOW request: seconds until each of them is searchable.
3. Deleted: (a) each of the first studies deleted from Orthanc (REST DELETE) until no search returns it:
   Orthanc's notice to the follower, its commit, the gateway's look; (b) each study of the batch deleted with the DeleteStudy RPC: seconds to its
   acknowledgement, then every search for AFTER_ACK_S, none of which may return it.
4. Load: image queries of CONCURRENCY clients (q/s, p99) for `--load-seconds`, idle, then while another
   process stores INGEST_PER_S images a second by STOW-RS for the follower to ingest.
5. Commits and compaction: `--added` synthetic images and `--deleted` of the base's, COMMIT_ROWS per commit
   through FaissBackend.apply, each commit timed (an ingest step's cost against the base's size); then
   `cxr index compact` as a child process: seconds and peak RSS.
Results: benchmarks/results/<date>-<host>-freshness.{json,md,png} (tables and plot: freshness_report).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import grpc
import numpy as np

from benchmarks import freshness_report, orthanc
from benchmarks.compare import _gateway_sender, _Queries
from benchmarks.load import run_load
from benchmarks.machine import describe, exit_status, result_path, save
from benchmarks.stack import exported, process_tree_cpu_s, process_tree_rss_mb, served
from benchmarks.timing import time_requests
from cxr import archives, gateway_process
from cxr.catalog import ExportedModel
from cxr.errors import FailedPreconditionError
from cxr.processes import free_ports, log_tail, stop_process
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import Settings, load_settings, to_environment
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from indexing import synthetic
from indexing.dicomweb_build import FOLLOW_FILE, cache_dir
from indexing.pacs_notices import NOTICE_PATH

NAME = "freshness"
MODEL = "cxr-mini"
ROOT = Path(__file__).resolve().parents[1]
IVF_FROM = 100_000  # images: a flat index this large is searched too slowly to serve (benchmarks.scale)
TOP_K = 10
ASK_EVERY_S = 0.02
WITHIN_S = 120.0  # a sample not searchable (or not gone) by then is counted as missed
PAUSE_S = 2.0  # before each STOW or deletion, a random part of this: random moments of the follower's looks
AFTER_ACK_S = 1.0  # how long searches go on after a DeleteStudy's acknowledgement
CONCURRENCY = 16
INGEST_PER_S = 10.0
COMMIT_ROWS = 10
NIH_IMAGES = 800  # in ../shared/data/nih800: each image is stored once per size, at most
READY_S = 300.0
# The follower's log line of a commit (indexing.dicomweb_build): what it added, replaced and deleted. Its moment
# splits a sample's seconds into the follower's part and the gateway's (refresh and search).
ADDED_LINE = re.compile(r": \+[1-9]\d* ~\d+ -\d+, generation \d+")
DELETED_LINE = re.compile(r": \+\d+ ~\d+ -[1-9]\d*, generation \d+")


class FollowerError(FailedPreconditionError):
    """The follower did not keep the synthetic base it was meant to add to."""


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    samples: int = 20
    load_s: float = 20.0
    added: int = 2000
    deleted: int = 500

    @property
    def ingested(self) -> int:
        """Images stored during the load: a few more than it lasts, in case the pace runs late."""
        return int(INGEST_PER_S * self.load_s) + 10

    def check(self) -> None:
        needed = 1 + 2 * self.samples + self.ingested
        if needed > NIH_IMAGES:
            raise ValueError(f"--samples {self.samples} and --load-seconds {self.load_s:g} need {needed} NIH images "
                             f"per size; there are {NIH_IMAGES}: lower them")


@dataclass(frozen=True)
class Sample:
    """One NIH image as the only instance of a new study, and its Part-10 bytes (the query)."""

    image: orthanc.Image8
    path: Path
    data: bytes


class Stamped:
    """A child's output, each line with the moment it was read (perf_counter), copied to its log file."""

    def __init__(self, stream, log_file: Path):
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream, log_file), daemon=True)
        self._thread.start()

    def _read(self, stream, log_file: Path) -> None:
        with log_file.open("a") as log:
            for line in stream:
                self.lines.append((time.perf_counter(), line))
                log.write(line)
                log.flush()

    def after(self, moment: float, pattern: re.Pattern) -> float | None:
        """Seconds from `moment` to the first line after it that matches; None when none has."""
        return next((at - moment for at, line in list(self.lines) if at > moment and pattern.search(line)), None)

    def count(self, since: float, pattern: re.Pattern) -> int:
        """Lines since `since` that match."""
        return sum(1 for at, line in list(self.lines) if at > since and pattern.search(line))


@dataclass(frozen=True)
class Archive:
    """One size's served stack: the gateway's stub, the PACS, and the pids whose memory is recorded."""

    settings: Settings
    size: int
    stub: pb_grpc.RetrievalStub
    pacs: orthanc.Orthanc
    gateway_pid: int
    follower_pid: int
    follower: Stamped
    triton_pid: int

    def finds(self, sample: Sample) -> bool:
        """Whether an image search with the sample's own DICOM returns it."""
        reply = self.stub.SearchByImage(pb.SearchByImageRequest(image=sample.data, top_k=TOP_K), timeout=30)
        return sample.image.sop_uid in {hit.image_id for hit in reply.hits}

    def images(self) -> int:
        """Images in the index the gateway serves now."""
        reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=30)
        return next(m.index_size for m in reply.models if m.name == MODEL)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds each part of the stack has used so far (with its children): two readings bound a window."""
        pids = {"triton": self.triton_pid, "gateway": self.gateway_pid, "follower": self.follower_pid,
                "orthanc": self.pacs.process.pid}
        return {name: process_tree_cpu_s(pid) for name, pid in pids.items()}


# Children: the CLI run to its end, or left running.

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxr_cli", *args]


def _environment(settings: Settings) -> dict:
    """A child's environment: this checkout's packages first, the settings as CXR_* variables."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **to_environment(settings)}


def _run_to_end(settings: Settings, *args: str) -> tuple[float, float, float]:
    """Seconds, peak RSS and peak anonymous RSS (MB) of `cxr ARGS` run to its end. The peak is its VmHWM, read
    every ASK_EVERY_S (wait4's ru_maxrss would count this process's own memory, which a child inherits on
    Linux); the anonymous part is what the kernel cannot drop, unlike the pages of files it maps."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(_cli(*args), env=_environment(settings), stdout=output, stderr=subprocess.STDOUT)
        peak = anonymous = 0.0
        while process.poll() is None:
            peak = max(peak, process_tree_rss_mb(process.pid, "VmHWM"))
            anonymous = max(anonymous, process_tree_rss_mb(process.pid, "RssAnon"))
            time.sleep(ASK_EVERY_S)
        seconds = time.perf_counter() - started
        if process.returncode:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"`cxr {' '.join(args)}` exited with {process.returncode}:\n{tail}")
    return seconds, peak, anonymous


@contextmanager
def _follower(settings: Settings, pacs: orthanc.Orthanc, notices_port: int) -> Iterator[tuple[subprocess.Popen,
                                                                                               Stamped]]:
    """`cxr index follow` with its defaults on `pacs`, into the model's index, taking Orthanc's deletion
    notices on `notices_port`, its output stamped; ready once its first pass has saved where it stands (an
    empty PACS: it writes nothing)."""
    log_file = settings.run_dir / "follower.log"
    pacs_settings = replace(settings, dicomweb_user=orthanc.USER, dicomweb_password=orthanc.PASSWORD)
    process = subprocess.Popen(_cli("index", "follow", "--dicomweb", pacs.url, "--model", MODEL,
                                    "--deletions-listen", str(notices_port)),
                               env=_environment(pacs_settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    output = Stamped(process.stdout, log_file)
    try:
        state = cache_dir(settings.index_path(MODEL)) / FOLLOW_FILE
        if _until(lambda: state.is_file() or process.poll() is not None, READY_S) is None or process.poll():
            raise RuntimeError(f"`cxr index follow` did not start following; see {log_file}:\n{log_tail(log_file)}")
        yield process, output
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C: it stops between two saved states
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _living_index(settings: Settings, size: int, triton_pid: int, log) -> Iterator[tuple[Archive, dict]]:
    """A synthetic base of `size` images served by a new gateway and followed from a new, empty Orthanc."""
    shutil.rmtree(settings.index_dir, ignore_errors=True)  # the last size's index and the follower's cache
    index_type = "ivf" if size >= IVF_FROM else "flat"
    seconds, rss_mb, _ = _run_to_end(settings, "index", "synth", "--model", MODEL, "--count", str(size),
                                     "--index-type", index_type)
    base = {"images": size, "index_type": index_type, "synth_s": round(seconds, 1), "synth_peak_rss_mb": round(rss_mb)}
    log(f"[{size:,}] base written: {base}")
    gateway, gateway_log = gateway_process.start(settings)
    try:
        gateway_process.wait_answering(settings, gateway, gateway_log)
        gateway_process.wait_serving(settings, READY_S)
        notices_port = free_ports(1)[0]
        script = orthanc.deletion_script(settings.run_dir / "lua", f"http://127.0.0.1:{notices_port}{NOTICE_PATH}")
        with orthanc.Orthanc(settings.run_dir / f"orthanc-{size}", settings={"LuaScripts": [str(script)]}) as pacs, \
                _follower(settings, pacs, notices_port) as (follower, output), \
                grpc.insecure_channel(gateway_process.local_address(settings)) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            yield Archive(settings, size, stub, pacs, gateway.pid, follower.pid, output, triton_pid), base
    finally:
        stop_process(gateway)


# Waiting and summing up.

def _until(done: Callable[[], bool], within_s: float = WITHIN_S) -> float | None:
    """Seconds until `done()` first says so (asked every ASK_EVERY_S); None if not within `within_s`."""
    started = time.perf_counter()
    while True:
        if done():
            return round(time.perf_counter() - started, 3)
        if time.perf_counter() - started > within_s:
            return None
        time.sleep(ASK_EVERY_S)


def _spread(seconds: list[float | None]) -> dict:
    """p50/p95/max of the samples seen, how many were missed, and each sample's seconds."""
    seen = [s for s in seconds if s is not None]
    figures = {"samples": len(seconds), "missed": len(seconds) - len(seen), "seconds": [
        None if s is None else round(s, 3) for s in seconds]}
    if seen:
        p50, p95 = np.percentile(seen, [50, 95])
        figures.update(p50_s=round(float(p50), 3), p95_s=round(float(p95), 3), max_s=round(max(seen), 3))
    return figures


def _samples(data_dir: Path, folder: Path, count: int, first: int) -> list[Sample]:
    images = orthanc.nih_images(data_dir, count, first, per_study=1)
    return [Sample(image, path, path.read_bytes()) for image, path in zip(images, orthanc.write_files(images, folder))]


# The parts of one size.

def _warm_up(archive: Archive, sample: Sample) -> None:
    """One instance through the whole path (the follower's decoders and Triton warm), and a check that the
    follower committed it beside the base rather than writing an index of the PACS alone."""
    orthanc.stow(archive.pacs.url, [sample.path])
    if _until(partial(archive.finds, sample)) is None:
        raise FollowerError(f"a stored instance was not searchable within {WITHIN_S:g} s; see "
                            f"{archive.settings.run_dir / 'follower.log'}")
    if (images := archive.images()) < archive.size:
        raise FollowerError(f"the follower replaced the {archive.size:,}-image base with an index of the PACS alone "
                            f"({images} images): this benchmark needs the follower that commits through "
                            "StoreBackend.apply (issue 20)")


def _searchable(archive: Archive, samples: list[Sample], rng: np.random.Generator) -> dict:
    """One STOW at a time, at random moments: seconds from its response until a search returns it, and until
    the follower logged its commit; the follower's CPU seconds and commits meanwhile (a commit of one image)."""
    seconds, committed = [], []
    started, cpu = time.perf_counter(), archive.cpu_s()["follower"]
    for sample in samples:
        time.sleep(rng.uniform(0, PAUSE_S))
        orthanc.stow(archive.pacs.url, [sample.path])
        stored = time.perf_counter()
        seconds.append(_until(partial(archive.finds, sample)))
        committed.append(archive.follower.after(stored, ADDED_LINE))
    return dict(_spread(seconds), follower_committed=_spread(committed),
                follower_cpu_s=round(archive.cpu_s()["follower"] - cpu, 2),
                follower_commits=archive.follower.count(started, ADDED_LINE))


def _searchable_together(archive: Archive, samples: list[Sample]) -> dict:
    """All in one STOW request: seconds from its response until each is searchable."""
    orthanc.stow(archive.pacs.url, [s.path for s in samples], batch=len(samples))
    started, seconds = time.perf_counter(), []
    for sample in samples:
        left = WITHIN_S - (time.perf_counter() - started)
        found = _until(partial(archive.finds, sample), left)
        seconds.append(None if found is None else time.perf_counter() - started)
    return _spread(seconds)


def _deleted_in_pacs(archive: Archive, samples: list[Sample], rng: np.random.Generator) -> dict:
    """Each study deleted from Orthanc at a random moment: seconds from the DELETE's answer until no search
    returns it (Orthanc's change feed tells of no deletion: its Lua callback's notice does)."""
    seconds, committed = [], []
    for sample in samples:
        study = archive.pacs.study_id(sample.image.study_uid)
        time.sleep(rng.uniform(0, PAUSE_S))
        archive.pacs.delete(f"/studies/{study}")
        deleted = time.perf_counter()
        seconds.append(_until(partial(_absent, archive, sample)))
        committed.append(archive.follower.after(deleted, DELETED_LINE))
    return dict(_spread(seconds), follower_committed=_spread(committed))


def _absent(archive: Archive, sample: Sample) -> bool:
    return not archive.finds(sample)


def _deleted_by_rpc(archive: Archive, samples: list[Sample], rng: np.random.Generator) -> dict:
    """DeleteStudy of each study: seconds to its acknowledgement; then searches for AFTER_ACK_S, none of which
    may return it."""
    acknowledged, deleted, searches, returned = [], 0, 0, 0
    for sample in samples:
        time.sleep(rng.uniform(0, PAUSE_S))
        started = time.perf_counter()
        reply = archive.stub.DeleteStudy(pb.DeleteStudyRequest(model=MODEL, study_uid=sample.image.study_uid),
                                         timeout=30)
        acknowledged.append(time.perf_counter() - started)
        deleted += reply.deleted
        after = time.perf_counter()
        while time.perf_counter() - after < AFTER_ACK_S:
            searches += 1
            returned += archive.finds(sample)
    return dict(_spread(acknowledged), deleted=deleted, searches_after_ack=searches, returned_after_ack=returned)


def _store_paced(url: str, paths: list[str], per_s: float, seconds: float, connection) -> None:
    """A process of its own (its CPU is not the load generator's): one STOW-RS every 1/per_s s for `seconds`
    once told to go; sends back how many it stored and in how long."""
    connection.send("ready")
    connection.recv()
    started, stored = time.perf_counter(), 0
    for n, path in enumerate(paths):
        if n / per_s >= seconds:
            break
        time.sleep(max(0.0, started + n / per_s - time.perf_counter()))
        orthanc.stow(url, [Path(path)])
        stored += 1
    connection.send((stored, time.perf_counter() - started))


def _load(archive: Archive, queries: _Queries, ingest: list[Sample], load_s: float) -> dict:
    """Image q/s and latency of CONCURRENCY clients while INGEST_PER_S images a second are stored, against their
    mean idle before and after (the neighbours of a shared machine come and go); then how long the follower took
    to make the last of the stored images searchable."""
    make = _gateway_sender(archive.settings, "image", queries)
    cpu = [archive.cpu_s()]
    idle = run_load(make, CONCURRENCY, 10**9, load_s)
    cpu.append(archive.cpu_s())
    busy, ingest_figures = _ingesting(archive, make, ingest, load_s)
    cpu.append(archive.cpu_s())
    idle_after = run_load(make, CONCURRENCY, 10**9, load_s)
    idle_qps = (idle["qps"] + idle_after["qps"]) / 2
    return {"idle": idle, "ingesting": busy, "idle_after": idle_after,
            "qps_ratio": round(busy["qps"] / idle_qps, 3) if idle_qps else None, "ingest": ingest_figures,
            "cpu_s": {"idle": _used(cpu[0], cpu[1]), "ingesting": _used(cpu[1], cpu[2])}}


def _used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before}


def _ingesting(archive: Archive, make, ingest: list[Sample], load_s: float) -> tuple[dict, dict]:
    """The load while another process stores INGEST_PER_S images a second, and what that ingest did."""
    before = archive.images()
    context = multiprocessing.get_context("spawn")  # this process holds gRPC channels: no fork
    here, there = context.Pipe()
    storer = context.Process(target=_store_paced, args=(archive.pacs.url, [str(s.path) for s in ingest],
                                                        INGEST_PER_S, load_s, there))
    storer.start()
    try:
        here.recv()
        started = time.perf_counter()
        here.send("go")
        busy = run_load(make, CONCURRENCY, 10**9, load_s)
        stored, seconds = here.recv()
    finally:
        storer.join(60)
    backlog = _until(lambda: archive.images() >= before + stored)
    return busy, {"stored": stored, "seconds": round(seconds, 2), "per_s": round(stored / seconds, 2),
                  "all_searchable_after_load_s": backlog, "index_grew_by": archive.images() - before,
                  "follower_commits": archive.follower.count(started, ADDED_LINE)}


def _timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _ms(times: list[float]) -> dict:
    p50, p95 = np.percentile(times, [50, 95])
    return {"commits": len(times), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "max_ms": round(max(times), 2)}


def _commits(archive: Archive, model: ExportedModel, added: int, deleted: int) -> dict:
    """`added` synthetic images and `deleted` of the base's, COMMIT_ROWS a commit, through FaissBackend.apply
    from this process (beside the follower's commits), each timed. A process's first commit also opens the
    build's image table: apart. The first and last tenth of the adds show what the rows pending cost."""
    backend = FaissBackend(archive.settings.index_dir)
    vectors, cluster = synthetic.clustered(added, model.embed_dim, seed=1, start=archive.size)
    rows = synthetic.rows(archive.size, cluster, seed=1)  # image ids after the base's: new images
    adds = [_timed_ms(partial(backend.apply, MODEL, Change(vectors[i:i + COMMIT_ROWS], tuple(rows[i:i + COMMIT_ROWS]),
                                                          export_sha256=model.export_sha256)))
            for i in range(0, added, COMMIT_ROWS)]
    stride = max(1, archive.size // max(deleted, 1))
    gone = [f"syn{i:09d}" for i in range(0, archive.size, stride)][:deleted]  # named as synthetic.rows names them
    deletes = [_timed_ms(partial(backend.apply, MODEL, Change(image_ids=tuple(gone[i:i + COMMIT_ROWS]))))
               for i in range(0, len(gone), COMMIT_ROWS)]
    tenth = max(1, len(adds) // 10)
    return {"first_ms": round(adds[0], 2), "add": _ms(adds[1:] or adds), "delete": _ms(deletes) if deletes else {},
            "add_first_tenth": _ms(adds[1:1 + tenth] or adds), "add_last_tenth": _ms(adds[-tenth:]),
            "rows_per_commit": COMMIT_ROWS, "pending": backend.pending(MODEL)}


def _reloads(settings: Settings) -> int:
    """Builds the gateway has loaded, as its log tells."""
    return (settings.run_dir / gateway_process.LOG_FILE).read_text(errors="replace").count("serving index ")


def _commits_and_compaction(archive: Archive, model: ExportedModel, queries: _Queries, plan: Plan) -> dict:
    """Commits timed; an image search's latency before them, with them pending, and after `cxr index compact`
    (timed, with its peak RSS) has folded them and the gateway loaded the compacted build."""
    stub, image = archive.stub, queries.images[0]
    search = partial(stub.SearchByImage, pb.SearchByImageRequest(image=image, top_k=TOP_K), timeout=30)
    before = time_requests(search, 200, 10.0, warmup=3)
    commits = _commits(archive, model, plan.added, plan.deleted)
    time.sleep(2 * archive.settings.index_changes_poll_s)
    pending = time_requests(search, 200, 10.0, warmup=3)
    images, loaded = archive.images(), _reloads(archive.settings)
    seconds, rss_mb, anonymous_mb = _run_to_end(archive.settings, "index", "compact", "--model", MODEL)
    reloaded = _until(lambda: _reloads(archive.settings) > loaded)
    after = time_requests(search, 200, 10.0, warmup=3)
    compaction = {"seconds": round(seconds, 2), "peak_rss_mb": round(rss_mb), "peak_anonymous_mb": round(anonymous_mb),
                  "gateway_reloaded_after_s": reloaded,
                  "images_before": images, "images_after": archive.images()}
    return {"commits": commits, "compaction": compaction,
            "search_c1": {"before_commits": before, "commits_pending": pending, "after_compaction": after}}


def _measure(settings: Settings, model: ExportedModel, size: int, plan: Plan, queries: _Queries, triton_pid: int,
             log) -> dict:
    rng = np.random.default_rng(size)
    folder = settings.run_dir / f"dicom-{size}"
    one, together = plan.samples, plan.samples
    pool = _samples(settings.data_dir, folder, 1 + one + together + plan.ingested, first=0)
    warm, single = pool[0], pool[1:1 + one]
    batch, ingest = pool[1 + one:1 + one + together], pool[1 + one + together:]
    load_before = os.getloadavg()[0]  # the machine may be shared: what else ran is part of the figures
    with _living_index(settings, size, triton_pid, log) as (archive, base):
        _warm_up(archive, warm)
        figures = {"base": base}
        for name, part in (("searchable", lambda: _searchable(archive, single, rng)),
                           ("searchable_together", lambda: _searchable_together(archive, batch)),
                           ("deleted_in_pacs", lambda: _deleted_in_pacs(archive, single, rng)),
                           ("deleted_by_rpc", lambda: _deleted_by_rpc(archive, batch, rng)),
                           ("load", lambda: _load(archive, queries, ingest, plan.load_s))):
            figures[name] = part()
            log(f"[{size:,}] {name}: {freshness_report.brief(figures[name])}")
        figures.update(_commits_and_compaction(archive, model, queries, plan))
        log(f"[{size:,}] commits: {figures['commits']}; compaction: {figures['compaction']}")
        figures["peak_rss_mb"] = {"gateway": process_tree_rss_mb(archive.gateway_pid, "VmHWM"),
                                  "follower": process_tree_rss_mb(archive.follower_pid, "VmHWM")}
    figures["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    shutil.rmtree(folder, ignore_errors=True)
    return figures


def _code_version() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip()


def _write(results: dict) -> Path:
    """The JSON, the Markdown and the plot beside them (written again after each size)."""
    plot = result_path(NAME).with_suffix(".png")
    freshness_report.plot(results, plot)
    return save(NAME, results, freshness_report.markdown(results, plot.name))


def run(plan: Plan, log=print) -> dict:
    plan.check()
    base = load_settings()
    nih = base.data_dir / "nih800"
    queries = _Queries(archives.nih_labels(nih / "labels.csv", nih))
    results = {"machine": describe(), "code": _code_version(), "command": "make bench-freshness",
               "settings": {**asdict(plan), "model": MODEL, "top_k": TOP_K, "concurrency": CONCURRENCY,
                            "ingest_per_s": INGEST_PER_S, "pause_s": PAUSE_S, "after_ack_s": AFTER_ACK_S,
                            "ivf_from": IVF_FROM, "commit_rows": COMMIT_ROWS, "follower": "cxr index follow, defaults",
                            "index_changes_poll_s": base.index_changes_poll_s},
               "sizes": {}}
    with exported(base, MODEL) as settings:
        model = ExportedModel.load(settings.model_repository, MODEL)
        with served(settings, [], gateway=False, rebuild_index=False) as stack:  # Triton, for every size
            for size in plan.sizes:
                results["sizes"][str(size)] = _measure(settings, model, size, plan, queries, stack.triton_pid, log)
                _write(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000",
                        help="base sizes, comma-separated (10000000 works, given hours: the report's scaling section)")
    parser.add_argument("--samples", type=int, default=Plan.samples, help="instances per freshness and deletion part")
    parser.add_argument("--load-seconds", type=float, default=Plan.load_s, help="each load run (idle, ingesting)")
    parser.add_argument("--added", type=int, default=Plan.added, help="images committed before compacting")
    parser.add_argument("--deleted", type=int, default=Plan.deleted, help="base images deleted before compacting")
    args = parser.parse_args(argv)
    plan = Plan(tuple(int(s) for s in args.sizes.split(",")), args.samples, args.load_seconds, args.added,
                args.deleted)
    results = run(plan)
    return exit_status(freshness_report.problems(results))


if __name__ == "__main__":
    sys.exit(main())
