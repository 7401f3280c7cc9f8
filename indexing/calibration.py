"""`cxr index calibrate`: the finding suggestions' calibration (cxr.suggestions), fitted on a validation split
and kept with the model's index in service (StoreBackend.set_calibration).

Each validation image is embedded through Triton as a build embeds it and searched in the index; its own
patient's images are dropped from its neighbours (the index may hold them, and a patient's other images are
near-copies that would vote for what the patient has, which a new patient's query cannot count on). The
neighbours vote, k is chosen on a grid and a map per finding is fitted (cxr.suggestions.fit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from cxr import suggestions
from cxr.archives import Record
from cxr.catalog import ExportedModel
from cxr.errors import FailedPreconditionError
from cxr.settings import Settings
from cxr.store.interface import StoreBackend, VectorStore
from cxr.suggestions import Calibration, Neighbours
from indexing.build import BuildOptions, embed_records

FETCH_MARGIN = 64  # neighbours fetched beyond the largest k, for the query's own patient's images to drop


class NothingToCalibrateError(FailedPreconditionError):
    """No validation image with finding labels could be embedded."""


def neighbours(store: VectorStore, vectors: np.ndarray, records: Sequence[Record], k: int) -> list[Neighbours]:
    """Per query (a record and its vector), its k nearest images of other patients, best first."""
    assert len(vectors) == len(records), (len(vectors), len(records))
    found: list[Neighbours | None] = [None] * len(records)
    todo, fetch = list(range(len(records))), min(store.count, k + FETCH_MARGIN)
    while todo:
        hits = store.search(vectors[todo], fetch)
        short = []
        for position, hit_list in zip(todo, hits):
            kept = _other_patients(store, hit_list, records[position])[:k]
            if len(kept) < k and fetch < store.count:
                short.append(position)  # a patient with many images: look further
            found[position] = Neighbours(tuple(score for score, _ in kept), tuple(labels for _, labels in kept),
                                         frozenset(records[position].labels))
        todo, fetch = short, min(store.count, fetch * 4)
    return found


def _other_patients(store: VectorStore, hits, record: Record) -> list[tuple[float, tuple[str, ...]]]:
    rows = store.rows([i for i, _ in hits])
    return [(score, tuple(row.get("labels") or ())) for (_, score), row in zip(hits, rows)
            if row.get("image_id") != record.image_id
            and not (record.patient_id and row.get("patient_id") == record.patient_id)]


def calibrate(records: Sequence[Record], model: ExportedModel, settings: Settings, backend: StoreBackend,
              split: str, grid: Sequence[int] = suggestions.K_GRID, weighting: str = "similarity",
              options: BuildOptions = BuildOptions()) -> Calibration:
    """Fit the calibration on `records` (a validation split, described by `split`) and keep it with the index."""
    labelled = [r for r in records if r.labels]
    if not labelled:
        raise NothingToCalibrateError("the validation split has no image with finding labels: calibrate on an "
                                      "archive with labels (NIH labels CSV, manifest `labels`)")
    store = backend.open(model.name, model.embed_dim, model.export_sha256)
    try:
        vectors = embed_records(labelled, model, settings, options)
        if not vectors:
            raise NothingToCalibrateError(f"none of the {len(labelled)} validation images could be read")
        kept = sorted(vectors)
        queries = neighbours(store, np.stack([vectors[p] for p in kept]), [labelled[p] for p in kept], max(grid))
        calibration = suggestions.fit(queries, grid, weighting, fitted={
            "model": model.name, "export_sha256": model.export_sha256, "split": split, "index_count": store.count,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    finally:
        store.close()
    backend.set_calibration(model.name, calibration.to_dict())
    return calibration
