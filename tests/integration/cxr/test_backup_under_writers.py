"""Backups taken while every writer works (cxr.backup): a follower's commits and compactions to a FAISS index
(support.commit_writer, its own process), a gateway's audit log rotating, reports into the ledger. Each
backup, restored into a fresh root, is one moment of each: the index holds every image acknowledged before
the backup began exactly once and nothing deleted before it, whatever landed during it whole or not at all;
the audit chain verifies and goes on; the ledger is a whole snapshot."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxr.backup import create_backup, restore_backup
from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report
from cxr.settings import load_settings
from cxr.store.faiss_backend import FaissBackend
from gateway.audit_chain import verify_log
from gateway.audit_log import AuditLog
from support.commit_writer import DIM, EXPORT, MODEL, study_of, vectors

TESTS = Path(__file__).parents[2]
BASE_IMAGES = 20_000  # compaction takes long enough that swaps land during backups
BACKUPS = 6
CONFIG = f"""[cxr]
model = "{MODEL}"
index_dir = "indexes"
audit_log = "audit/audit.log"
audit_max_bytes = 65536
"""


def _lines(log: Path) -> list[dict]:
    text = log.read_text() if log.exists() else ""
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def _present(entries: list[dict]) -> set[str]:
    """The images the commits acknowledged among `entries` leave."""
    present: set[str] = set()
    intent = None
    for entry in entries:
        if "intent" in entry:
            intent = entry
        elif "ack" in entry:
            if intent["intent"] == "add":
                present.update(intent["ids"])
            elif intent["intent"] == "delete":
                present.difference_update(intent["ids"])
            else:
                present.difference_update({i for i in present if study_of(i) in intent["ids"]})
            intent = None
    return present


def _touched(entries: list[dict], start: int, end: int, every: set[str]) -> set[str]:
    """Images a commit may have changed between lines `start` and `end`: the one in flight at `start` and
    those begun before `end`."""
    in_flight = next((i for i in range(start - 1, -1, -1) if "intent" in entries[i] or "ack" in entries[i]), None)
    first = in_flight if in_flight is not None and "intent" in entries[in_flight] else start
    touched: set[str] = set()
    for entry in entries[first:end]:
        if "intent" in entry:
            ids = set(entry["ids"])
            touched |= {i for i in every if study_of(i) in ids} if entry["intent"] == "study" else ids
    return touched


def _held(index_dir: Path) -> Counter:
    store = FaissBackend(index_dir).open(MODEL, dim=DIM, export_sha256=EXPORT)
    try:
        hits = store.search(np.ones((1, DIM), np.float32) / np.sqrt(DIM), store.count)[0]
        held = Counter(row["image_id"] for row in store.rows([i for i, _ in hits]))
        assert sum(held.values()) == store.count
        return held
    finally:
        store.close()


class Writers:
    """The follower (a process), a gateway's audit log and a report intake, writing until stopped."""

    def __init__(self, settings, acks: Path):
        self.stop = threading.Event()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
        self.follower = subprocess.Popen([sys.executable, "-m", "support.commit_writer", str(settings.index_dir),
                                          str(acks), "1"], cwd=TESTS, env=env)
        self.threads = [threading.Thread(target=self._audit, args=(settings,)),
                        threading.Thread(target=self._reports, args=(settings,))]
        for thread in self.threads:
            thread.start()

    def _audit(self, settings) -> None:
        log = AuditLog(settings.audit_log, max_bytes=settings.audit_max_bytes)
        while not self.stop.is_set():
            log.append({"request_id": "r", "method": "SearchByText", "status": "OK", "pad": "x" * 300})
            time.sleep(0.002)  # ~150 KB/s: a 64 KiB file rotates every half second
        log.close()

    def _reports(self, settings) -> None:
        with ReportLedger(settings.reports_path(MODEL)) as ledger:
            n = 0
            while not self.stop.is_set():
                n += 1
                ledger.put(Report(accession_number=f"a{n}", patient_id="p", impression="Clear.", source="csv"))

    def close(self) -> None:
        self.stop.set()
        self.follower.kill()
        self.follower.wait(30)
        for thread in self.threads:
            thread.join(30)


def test_backups_under_writers_restore_to_one_moment_of_each(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "cxr.toml").write_text(CONFIG)
    settings = load_settings(site, {})
    base = [{"image_id": f"b-{i}", "study_uid": f"bs-{i // 4}", "projection": "Lateral"} for i in range(BASE_IMAGES)]
    FaissBackend(settings.index_dir).write(MODEL, vectors(BASE_IMAGES, np.random.default_rng(0)), base,
                                           {"model": MODEL, "dim": DIM, "export_sha256": EXPORT}, [], "flat")
    acks = tmp_path / "acks.jsonl"
    writers = Writers(settings, acks)
    taken = []
    try:
        time.sleep(3.0)  # the follower imports, then commits
        for n in range(BACKUPS):
            start = len(_lines(acks))
            folder, manifest = create_backup(settings, site, tmp_path / "backups")
            taken.append((folder, manifest, start, len(_lines(acks))))
            time.sleep(0.3)
    finally:
        writers.close()
    entries = _lines(acks)
    every = {i for e in entries if "intent" in e and e["intent"] != "study" for i in e["ids"]}
    compactions = sum(1 for e in entries if "compacted" in e)
    for n, (folder, manifest, start, end) in enumerate(taken):
        restored = restore_backup(folder, tmp_path / f"restored-{n}", {}).settings
        held = _held(restored.index_dir)
        assert all(held[f"b-{i}"] == 1 for i in range(BASE_IMAGES)), f"backup {n}: a build image was lost"
        assert not [i for i, count in held.items() if count > 1], f"backup {n}: an image is held twice"
        present, touched = _present(entries[:start]), _touched(entries, start, end, every)
        written = {i for i in held if i.startswith("w")}
        assert not [i for i in present - touched if i not in written], f"backup {n}: an acknowledged add is missing"
        assert not (written - present - touched), f"backup {n}: a deletion acknowledged before it came back"
        lines = manifest.of_kind("audit_log")[0].details["lines"]
        assert verify_log(restored.audit_log) == (None, lines), f"backup {n}: the audit chain"
        log = AuditLog(restored.audit_log)
        log.append({"request_id": "after", "method": "SearchByText", "status": "OK"})
        log.close()
        assert verify_log(restored.audit_log) == (None, lines + 1)
        with ReportLedger(restored.reports_path(MODEL)) as ledger:
            seqs = [r.seq for r in ledger.changes(0, limit=10**6)]
        assert seqs == list(range(1, len(seqs) + 1)) == list(range(1, manifest.of_kind("report_ledger")[0].details[
            "reports"] + 1)), f"backup {n}: the ledger is not one snapshot"
    rotations = [len(m.of_kind("audit_log")[0].details["rotated"]) for _, m, _, _ in taken]
    seconds = [m.seconds for _, m, _, _ in taken]
    print(f"{len(taken)} backups ({min(seconds):.2f}-{max(seconds):.2f} s each) during "
          f"{sum(1 for e in entries if 'ack' in e)} commits and {compactions} compactions; audit files "
          f"{rotations[0]}..{rotations[-1]} rotated")
    assert compactions >= 1 and rotations[-1] > rotations[0]
