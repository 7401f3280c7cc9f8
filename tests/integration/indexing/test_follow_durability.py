"""`cxr index follow` SIGKILLed at random moments while instances are stored into and deleted from a real
Orthanc, with compaction due after every few rows: after each kill the index opens with every checksum
verified and holds no image twice; after the last, one more pass leaves it holding exactly the instances
Orthanc holds, each once (tests/integration/cxr/test_faiss_durability.py kills the commit path itself
fifty times; this kills the real follower, with Triton and the PACS, a dozen)."""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests

from benchmarks import orthanc
from cxr import dicomweb
from cxr.settings import to_environment
from cxr.store import faiss_store
from support import DATA_DIR

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"
TRIALS = 12
FIRST, LATER = 12, 36


def _follow(settings, pacs, output, *extra) -> list[str]:
    env = dict(os.environ, **to_environment(settings))
    env["CXR_DICOMWEB_PASSWORD"] = orthanc.PASSWORD
    env["CXR_INDEX_COMPACT_ROWS"] = "4"  # compaction after almost every commit: killed in the middle of some
    return [sys.executable, "-m", "cxr_cli", "index", "follow", "--dicomweb", pacs.url, "--dicomweb-user",
            orthanc.USER, "--output-dir", str(output), "--model", MODEL, "--workers", "1", "--interval", "0.2",
            *extra], env


def _held(output) -> Counter:
    store = faiss_store.load(output)  # every file checked against the manifest's checksums
    store.refresh()  # and every commit against the generation's
    return Counter(row["image_id"] for row in store.rows(_all_ids(store)))


def _all_ids(store) -> list[int]:
    ids = [i for i in range(store.table.count) if i not in store.delta.dead_base]
    return ids + [store.table.count + p for p, alive in enumerate(store.delta.alive) if alive]


def test_a_killed_follower_loses_nothing_and_holds_nothing_twice(served, tmp_path):
    if reason := orthanc.missing():
        pytest.skip(reason)
    images = orthanc.nih_images(DATA_DIR, FIRST + LATER)
    paths = orthanc.write_files(images, tmp_path / "dicom")
    output, choose, kept = tmp_path / "index", random.Random(0), dict(zip(images, paths))
    with orthanc.Orthanc(tmp_path / "orthanc") as pacs:
        orthanc.stow(pacs.url, paths[:FIRST])
        stored = list(images[:FIRST])
        for trial in range(TRIALS):
            command, env = _follow(served, pacs, output)
            child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0 + choose.random() * 4.0)
            new = images[FIRST + 3 * trial:FIRST + 3 * trial + 3]
            orthanc.stow(pacs.url, [kept[image] for image in new])
            stored += new
            if trial % 3 == 2:
                gone = stored.pop(choose.randrange(len(stored)))
                requests.delete(f"{pacs.rest_url}/instances/" + dicomweb.orthanc_id(
                    gone.patient_id, gone.study_uid, gone.series_uid, gone.sop_uid),
                    auth=(orthanc.USER, orthanc.PASSWORD), timeout=30).raise_for_status()
            time.sleep(choose.random() * 2.0)
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            if (output / "manifest.json").is_file():
                held = _held(output)
                assert max(held.values()) == 1, f"trial {trial}: an image is held twice"
                assert set(held) <= {i.sop_uid for i in images}, f"trial {trial}"
        command, env = _follow(served, pacs, output, "--once")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    held = _held(output)
    assert held == Counter(image.sop_uid for image in stored) and len(stored) == FIRST + LATER - TRIALS // 3
    assert "compacted_from" in faiss_store.load(output).manifest  # the follower compacted on its own
