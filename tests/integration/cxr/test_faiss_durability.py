"""A FAISS index survives SIGKILL of its writers at any moment: during commits of adds, replacements and
deletions, and during compaction. After each kill, a new process finds every acknowledged add present
exactly once, every acknowledged deletion absent, and the files checksummed in the manifest and the
generation verify; then it writes on from there."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxr.store.faiss_backend import FaissBackend
from support.commit_writer import DIM, EXPORT, MODEL, study_of, vectors

TESTS = Path(__file__).parents[2]
TRIALS = 50
BUDGET_S = 240  # the trials stop early past this, having run at least MIN_TRIALS
MIN_TRIALS = 20
BASE_IMAGES = 20_000  # a build large enough that compaction takes long enough to be killed in the middle


def _expected(log: Path) -> tuple[set[str], set[str]]:
    """The images the acknowledged commits leave, and those that commits in flight at a kill touched
    (landed or not)."""
    present: set[str] = set()
    uncertain: set[str] = set()
    intent = None
    for entry in map(json.loads, log.read_text().splitlines()):
        if "intent" in entry:
            if intent is not None:  # the previous writer was killed before its acknowledgement
                uncertain |= _touched(present, intent)
            intent = entry
        elif "ack" in entry:
            _replay(present, intent)
            intent = None
    if intent is not None:
        uncertain |= _touched(present, intent)
    return present, uncertain


def _touched(present: set[str], intent: dict) -> set[str]:
    return set(intent["ids"]) if intent["intent"] != "study" else {i for i in present if study_of(i) in intent["ids"]}


def _replay(present: set[str], intent: dict) -> None:
    if intent["intent"] == "add":
        present.update(intent["ids"])
    elif intent["intent"] == "delete":
        present.difference_update(intent["ids"])
    else:
        present.difference_update({i for i in present if study_of(i) in intent["ids"]})


def _held(index_dir: Path) -> Counter:
    """How many rows of each image id the index holds: a new process's view, files verified."""
    store = FaissBackend(index_dir).open(MODEL, dim=DIM, export_sha256=EXPORT)
    hits = store.search(np.ones((1, DIM), np.float32) / np.sqrt(DIM), store.count)[0]
    held = Counter(row["image_id"] for row in store.rows([i for i, _ in hits]))
    assert sum(held.values()) == store.count
    return held


def _kill_during(command: list[str], log: Path, rng: random.Random) -> bool:
    """Run the writer, SIGKILL it at a random moment; whether it was compacting then."""
    child = subprocess.Popen(command, cwd=TESTS, env=dict(os.environ, PYTHONPATH=str(TESTS)))
    time.sleep(1.0 + rng.random() * 2.0)  # about a second to import, then commits
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    states = [e for e in lines if "compacting" in e or "compacted" in e]
    return bool(states) and "compacting" in states[-1]


def test_sigkilled_writers_lose_no_acknowledged_commit(tmp_path):
    index_dir, log = tmp_path / "indexes", tmp_path / "acks.jsonl"
    rng = np.random.default_rng(0)
    base = [{"image_id": f"b-{i}", "study_uid": f"bs-{i // 4}", "projection": "Lateral"} for i in range(BASE_IMAGES)]
    FaissBackend(index_dir).write(MODEL, vectors(BASE_IMAGES, rng), base, {"model": MODEL, "dim": DIM,
                                                                           "export_sha256": EXPORT}, [], "flat")
    choose, started, trials, mid_compaction = random.Random(1), time.monotonic(), 0, 0
    while trials < TRIALS and (trials < MIN_TRIALS or time.monotonic() - started < BUDGET_S):
        command = [sys.executable, "-m", "support.commit_writer", str(index_dir), str(log), str(trials)]
        mid_compaction += _kill_during(command, log, choose)
        present, in_flight = _expected(log)
        held = _held(index_dir)
        assert all(held[f"b-{i}"] == 1 for i in range(BASE_IMAGES)), f"trial {trials}: a build image was lost"
        written = {i for i in held if i.startswith("w")}
        assert not [i for i in present - in_flight if held[i] != 1], f"trial {trials}: an acknowledged add is missing"
        assert not [i for i in written if held[i] > 1], f"trial {trials}: an image is held twice"
        assert not (written - present - in_flight), f"trial {trials}: an acknowledged deletion came back"
        trials += 1
    commits = sum(1 for line in log.read_text().splitlines() if '"ack"' in line)
    leftovers = [p.name for p in index_dir.iterdir() if p.name != MODEL]
    assert len(leftovers) <= 1, leftovers  # the last killed compaction's staging; the others were removed
    print(f"{trials} trials, {commits} acknowledged commits, {mid_compaction} kills during a compaction")
    assert commits > trials and mid_compaction >= 1
