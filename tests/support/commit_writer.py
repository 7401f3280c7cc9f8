"""A writer of commits to a FAISS index that a durability trial kills at a random moment
(tests/integration/e2e/test_living_archive_durability.py): `python -m support.commit_writer DIR LOG SEED`.

It adds new images, adds some again (replacing them), deletes images and whole studies, and compacts in a
background thread, as a follower and administrators would. Before each commit it writes its intent to LOG
and after it returns the acknowledgement, each line synced, so the trial knows what must have survived:
every acknowledged add present once, every acknowledged delete absent; the one commit in flight at the
kill may have landed or not.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from pathlib import Path

import numpy as np

from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change

MODEL, DIM, EXPORT = "m", 16, "e1"
COMPACT_PAST = 40  # rows pending: compaction runs often enough to be killed in the middle of one


def vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Log:
    def __init__(self, path: Path):
        self.file = path.open("a")
        self.lock = threading.Lock()

    def write(self, **entry) -> None:
        with self.lock:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())


def study_of(image_id: str) -> str:
    return "st-" + image_id[:-1]  # images w<seed>-<n> fall in studies of ten


def main(index_dir: Path, log_path: Path, seed: int) -> None:
    rng, backend, log = np.random.default_rng(seed), FaissBackend(index_dir), Log(log_path)
    compacting = threading.Lock()
    serial = 0
    while True:
        kind = random.Random(int(rng.integers(1 << 30))).choice(["add", "add", "add", "again", "delete", "study"])
        if kind in ("add", "again"):
            count = int(rng.integers(1, 8))
            ids = [f"w{seed}-{serial + i}" for i in range(count)] if kind == "add" else \
                [f"w{seed}-{int(i)}" for i in rng.integers(0, max(serial, 1), 3)]
            serial += count if kind == "add" else 0
            rows = tuple({"image_id": i, "study_uid": study_of(i), "projection": "Frontal"} for i in ids)
            change = Change(vectors(len(rows), rng), rows, export_sha256=EXPORT)
            log.write(intent="add", ids=ids)
        elif kind == "delete":
            ids = [f"w{seed}-{int(i)}" for i in rng.integers(0, max(serial, 1), 2)]
            change = Change(image_ids=tuple(ids))
            log.write(intent="delete", ids=ids)
        else:
            study = study_of(f"w{seed}-{int(rng.integers(0, max(serial, 1)))}")
            change = Change(study_uids=(study,))
            log.write(intent="study", ids=[study])
        backend.apply(MODEL, change)
        log.write(ack=True)
        if backend.pending(MODEL) > COMPACT_PAST and compacting.acquire(blocking=False):
            threading.Thread(target=_compact, args=(backend, compacting, log), daemon=True).start()


def _compact(backend: FaissBackend, compacting: threading.Lock, log: Log) -> None:
    try:
        log.write(compacting=True)
        backend.compact(MODEL)
        log.write(compacted=True)
    finally:
        compacting.release()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
