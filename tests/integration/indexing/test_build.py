"""Index builds through the real Triton: unreadable inputs reported, missing archives explained,
killed builds resumed to the same index."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from cxr import archives
from cxr.catalog import ExportedModel
from cxr.processes import free_ports
from cxr.settings import to_environment
from cxr.store import faiss_files, faiss_store
from indexing.build import BuildOptions, NothingToIndexError, build_index
from support import DATA_DIR

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"
IU = DATA_DIR / "iu"
NIH = DATA_DIR / "nih800"


@pytest.fixture(scope="module")
def model(served):
    return ExportedModel.load(served.model_repository, MODEL)


def test_iu_csvs_without_their_images_are_reported_not_a_traceback(served, model, tmp_path):
    records = archives.iu_xray(IU / "indiana_reports.csv", IU / "indiana_projections.csv", tmp_path / "images")
    output = tmp_path / "iu-index"
    with pytest.raises(NothingToIndexError, match=r"none of the 7466 images could be read \(7466 file not found\)"):
        build_index(records, model, served, output, BuildOptions(progress=False))
    assert not output.exists()
    with (tmp_path / "iu-index.skipped.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7466 and {r["reason"] for r in rows} == {"file not found"}


def test_unreadable_inputs_are_skipped_with_a_reason_and_the_rest_indexed(served, model, tmp_path):
    good = sorted((NIH / "valid" / "0_normal").glob("*.png"))[:3]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:300])
    rows = [{"image": str(p)} for p in good] + [{"image": n} for n in ("empty.png", "notes.png", "cut.png", "gone.png")]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    manifest = build_index(archives.manifest(tmp_path / "manifest.jsonl"), model, served, tmp_path / "idx",
                           BuildOptions(progress=False, batch_size=2))
    assert (manifest["count"], manifest["skipped"]) == (3, 4)
    with (tmp_path / "idx" / faiss_files.SKIPPED_FILE).open() as f:
        reasons = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(f)}
    assert reasons["empty.png"] == "empty file (0 bytes)" and reasons["gone.png"] == "file not found"
    assert reasons["notes.png"].startswith("not a readable image") and "truncated" in reasons["cut.png"]


def test_a_build_fails_over_from_a_dead_endpoint_to_a_live_one(served, model, tmp_path, caplog):
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    records = archives.nih_labels(NIH / "labels.csv", NIH)[:12]
    settings = replace(served, triton_urls=(dead, served.triton_grpc_url))
    with caplog.at_level(logging.WARNING, logger="cxr.triton"):
        manifest = build_index(records, model, settings, tmp_path / "idx",
                               BuildOptions(progress=False, batch_size=2, workers=1))
    assert (manifest["count"], manifest["skipped"]) == (12, 0)
    assert [r.getMessage().split(" ejected")[0] for r in caplog.records if "ejected" in r.getMessage()] == \
        [f"Triton endpoint {dead}"]


def _cli_build(settings, output, manifest_file):
    command = [sys.executable, "-m", "cxr_cli", "index", "build", "--manifest", str(manifest_file), "--model", MODEL,
               "--output-dir", str(output), "--batch-size", "4", "--workers", "1"]
    return subprocess.Popen(command, env=dict(os.environ, **to_environment(settings)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_killed_build_resumes_to_the_same_index(served, tmp_path):
    images = sorted((NIH / "train" / "1_abnormal").glob("*.png"))[:120]
    manifest_file = tmp_path / "archive.csv"
    manifest_file.write_text("image,labels\n" + "".join(f"{p},Finding\n" for p in images))
    killed = _cli_build(served, tmp_path / "resumed", manifest_file)
    partial = tmp_path / "resumed.partial"
    deadline = time.monotonic() + 120
    while len(list(partial.glob("chunk-*.npz"))) < 5 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    chunks_before = len(list(partial.glob("chunk-*.npz")))
    assert 0 < chunks_before < 30 and not (tmp_path / "resumed").exists()
    resumed = _cli_build(served, tmp_path / "resumed", manifest_file)
    resumed_out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, resumed_out
    whole = _cli_build(served, tmp_path / "whole", manifest_file)
    assert whole.wait(timeout=300) == 0
    a, b = faiss_store.load(tmp_path / "resumed"), faiss_store.load(tmp_path / "whole")
    assert a.rows(range(120)) == b.rows(range(120)) and a.count == 120
    np.testing.assert_allclose(a.index.reconstruct_n(0, 120), b.index.reconstruct_n(0, 120), atol=1e-5)
    assert not partial.exists()


def test_cli_on_iu_csvs_without_images_prints_the_missing_count_not_a_traceback(served, tmp_path):
    command = [sys.executable, "-m", "cxr_cli", "index", "build", "--reports-csv", str(IU / "indiana_reports.csv"),
               "--projections-csv", str(IU / "indiana_projections.csv"), "--images-dir", str(tmp_path / "images"),
               "--model", MODEL, "--output-dir", str(tmp_path / "iu")]
    done = subprocess.run(command, env=dict(os.environ, **to_environment(served)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 3  # bad input: none of the archive's images can be read
    assert "7466 of 7466 images missing" in done.stdout
    assert "Traceback" not in done.stderr and "iu.skipped.csv" in done.stderr


def test_the_cli_builds_into_milvus_the_vectors_it_builds_into_faiss(served, tmp_path):
    from support import MilvusLiteFile

    images = sorted((NIH / "valid" / "1_abnormal").glob("*.png"))[:24]
    manifest_file = tmp_path / "archive.csv"
    manifest_file.write_text("image,labels\n" + "".join(f"{p},Effusion\n" for p in images))
    milvus_db = tmp_path / "milvus.db"
    command = [sys.executable, "-m", "cxr_cli", "index", "build", "--manifest", str(manifest_file), "--model", MODEL,
               "--output-dir", str(tmp_path / "faiss"), "--workers", "1"]
    env = dict(os.environ, **to_environment(served))
    for extra in ([], ["--backend", "milvus", "--milvus-uri", str(milvus_db)]):
        done = subprocess.run(command + extra, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert f"indexed 24 of 24 images with {MODEL} into" in done.stdout and "(collection cxr_" in done.stdout
    flat = faiss_store.load(tmp_path / "faiss")
    with MilvusLiteFile(milvus_db) as backend:
        store = backend.open(MODEL)
        queries = flat.index.reconstruct_n(0, 24)
        assert [[i for i, _ in hits] for hits in store.search(queries, 5)] == \
            [[i for i, _ in hits] for hits in flat.search(queries, 5)]
        assert store.rows(range(24)) == flat.rows(range(24))
