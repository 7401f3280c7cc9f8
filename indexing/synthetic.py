"""`cxr index synth`: an index of N synthetic images, for benchmarks and for sizing a deployment.

Vectors are L2-normalised points around 2,000 random centres (real embeddings cluster; uniform
noise would make every approximate index look worse than it is). Metadata is plausible: two
images per study (frontal and lateral), labels drawn per cluster so that a label filter selects
neighbourhoods as it does in a real archive, short templated reports. Everything goes through the
same store code as a real build, in chunks, so ten million images never sit in memory at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from cxr.store import index_types

CENTRES = 2000
SPREAD = 0.9  # noise norm relative to a centre's
CHUNK = 100_000
# NIH ChestX-ray14's findings; about half of a real archive is "No Finding".
LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
          "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NO_FINDING = "No Finding"


def centres(dim: int) -> np.ndarray:
    """The same centres for every seed: queries drawn with another seed land in the same clusters."""
    return np.random.default_rng(0).standard_normal((CENTRES, dim), dtype=np.float32)


def clustered(count: int, dim: int, seed: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` unit vectors and their cluster numbers; deterministic in (seed, start)."""
    rng = np.random.default_rng([seed, start])
    cluster = rng.integers(0, CENTRES, count)
    vectors = centres(dim)[cluster]
    vectors += SPREAD * rng.standard_normal(vectors.shape, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, cluster


def rows(start: int, cluster: np.ndarray, seed: int) -> list[dict]:
    """Metadata for images start.. start+len(cluster)-1."""
    rng = np.random.default_rng([seed, start, 1])
    sick = rng.random(len(cluster)) < 0.5
    second = rng.integers(0, len(LABELS), len(cluster))
    out = []
    for offset, (c, is_sick, extra) in enumerate(zip(cluster.tolist(), sick.tolist(), second.tolist())):
        i = start + offset
        labels = [LABELS[c % len(LABELS)]] + ([LABELS[extra]] if extra % 4 == 0 and extra != c % len(LABELS) else []) \
            if is_sick else [NO_FINDING]
        out.append({"image_id": f"syn{i:09d}", "study_uid": f"synstudy{i // 2:09d}", "filename": f"syn{i:09d}.png",
                    "path": "", "projection": "Frontal" if i % 2 == 0 else "Lateral", "labels": labels,
                    "findings": "", "impression": f"{', '.join(labels)}.", "indication": "", "patient_id": ""})
    return out


def chunks(count: int, dim: int, seed: int, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, list[dict]]]:
    for start in range(0, count, chunk):
        vectors, cluster = clustered(min(chunk, count - start), dim, seed, start)
        yield vectors, rows(start, cluster, seed)


def training_sample(count: int, dim: int, seed: int, size: int) -> np.ndarray:
    """Training vectors drawn like the archive's (another stream: the archive is not read twice)."""
    return clustered(min(size, count), dim, seed + 1_000_003)[0]


def write(backend, model: str, dim: int, count: int, index_type: str, manifest: dict, seed: int = 0,
          rerank: bool = False, progress: bool = True) -> dict:
    """Write the synthetic index through `backend`'s writer (a cxr.store.interface.StoreBackend)."""
    index_types.check_count(index_type, count)
    manifest = dict(manifest, model=model, synthetic={"seed": seed, "centres": CENTRES, "spread": SPREAD},
                    source=f"synthetic ({count} clustered vectors, seed {seed})")
    with backend.writer(model, dim, count, index_type, manifest, rerank) as writer:
        needed = writer.training_size()
        if needed:
            writer.train(training_sample(count, dim, seed, needed))
        bar = tqdm(total=count, unit="img", desc=f"synth {model}", disable=not progress, dynamic_ncols=True)
        with bar:
            for vectors, metadata in chunks(count, dim, seed):
                writer.add(vectors, metadata)
                bar.update(len(vectors))
        return writer.finish([])


def queries(count: int, dim: int, seed: int = 7) -> np.ndarray:
    """Query vectors from the archive's distribution but not in it."""
    return clustered(count, dim, seed + 2_000_029)[0]


def exact_top_k(query_vectors: np.ndarray, count: int, dim: int, seed: int, k: int = 10) -> np.ndarray:
    """The true top k ids of each query over the synthetic archive, regenerated chunk by chunk
    (ten million 1152-d vectors do not fit in memory; their scores against 100 queries do)."""
    best_scores = np.full((len(query_vectors), k), -np.inf, np.float32)
    best_ids = np.full((len(query_vectors), k), -1, np.int64)
    for start in range(0, count, CHUNK):
        vectors, _ = clustered(min(CHUNK, count - start), dim, seed, start)
        scores = query_vectors @ vectors.T
        kept = min(k, scores.shape[1])
        top = np.argpartition(-scores, kept - 1, axis=1)[:, :kept]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(merged_scores, keep, 1), np.take_along_axis(merged_ids, keep, 1)
    return best_ids


def recall_at_k(found: list[list[int]], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)])) \
        if len(truth) else math.nan
