"""`cxr index synth`: deterministic clustered vectors with plausible metadata, written through the
store code a real build uses, and the exact neighbours that recall is measured against."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr.store import faiss_store
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Filter
from indexing import synthetic

ROOT = Path(__file__).parents[3]


def test_chunks_are_deterministic_and_the_same_whatever_the_chunk_size():
    whole = np.concatenate([v for v, _ in synthetic.chunks(1000, 16, seed=3, chunk=1000)])
    again = np.concatenate([v for v, _ in synthetic.chunks(1000, 16, seed=3, chunk=1000)])
    other = np.concatenate([v for v, _ in synthetic.chunks(1000, 16, seed=4, chunk=1000)])
    np.testing.assert_array_equal(whole, again)
    assert not np.allclose(whole, other)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1, rtol=1e-5)


def test_rows_pair_frontal_and_lateral_images_in_studies_with_cluster_labels():
    vectors, cluster = synthetic.clustered(6, 8, seed=0)
    rows = synthetic.rows(0, cluster, seed=0)
    assert [r["study_uid"] for r in rows] == ["synstudy000000000"] * 2 + ["synstudy000000001"] * 2 + \
        ["synstudy000000002"] * 2
    assert [r["projection"] for r in rows[:2]] == ["Frontal", "Lateral"]
    for row, c in zip(rows, cluster):
        assert row["labels"] == [synthetic.NO_FINDING] or row["labels"][0] == synthetic.LABELS[c % 14]


def test_exact_top_k_matches_brute_force_across_chunks():
    queries = synthetic.queries(5, 16)
    vectors = np.concatenate([v for v, _ in synthetic.chunks(250_000, 16, seed=1)])
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_array_equal(synthetic.exact_top_k(queries, 250_000, 16, seed=1), expected)


def test_a_synthetic_ivf_index_finds_the_exact_neighbours(tmp_path):
    written = synthetic.write(FaissBackend(tmp_path), "m", 256, 60_000, "ivf", {}, seed=2, progress=False)
    store = faiss_store.load(tmp_path / "m", "m", 256)
    queries = synthetic.queries(50, 256)
    truth = synthetic.exact_top_k(queries, 60_000, 256, seed=2)
    found = [[i for i, _ in hits] for hits in store.search(queries, 10)]
    assert written["count"] == store.count == 60_000 and written["synthetic"]["seed"] == 2
    assert synthetic.recall_at_k(found, truth) > 0.9
    effusion = store.search(queries[:3], 10, Filter.of(labels=["Effusion"]))
    assert all("Effusion" in row["labels"] for hits in effusion for row in store.rows([i for i, _ in hits]))


def test_the_cli_writes_an_unexported_model_s_index_for_sizing_the_store_opens(tmp_path):
    env = dict(os.environ, CXR_MODEL_REPOSITORY=str(tmp_path / "no-exports"))
    done = subprocess.run([sys.executable, "-m", "cxr_cli", "index", "synth", "--model", "cxr-mini", "--count", "3000",
                           "--index-type", "sq8", "--output-dir", str(tmp_path / "idx"), "--seed", "5", "--unexported"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 3000 synthetic 256-d vectors (sq8) for cxr-mini" in done.stdout
    assert "no gateway serves it (--unexported)" in done.stdout
    store = faiss_store.load(tmp_path / "idx", "cxr-mini", 256)
    assert store.index_type == "sq8" and store.rows([0])[0]["image_id"] == "syn000000000"
