"""Search one loaded index: exact or approximate inner product, with projection and label filters.

Filters become a FAISS IDSelector, so a filtered query still returns the true top k among the
images that pass. On a GPU (faiss-gpu, `use_gpu`), the index is copied to the device; GPU search
takes no selector and at most k = 2048, so filtered GPU queries over-fetch up to that bound.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

import faiss
import numpy as np

from cxr.errors import CxrError
from cxr.index_store import LoadedIndex, gpu_available

GPU_MAX_K = 2048


class UnknownFilterError(CxrError, ValueError):
    """A filter value that no image in the index carries."""


class IndexSearcher:
    def __init__(self, loaded: LoadedIndex, use_gpu: bool = False):
        self.loaded = loaded
        self.index = loaded.index
        self.on_gpu = use_gpu and gpu_available()
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, loaded.index)
        self._by_projection = self._group(lambda m: [m.get("projection") or ""])
        self._by_study = defaultdict(list)
        for item in loaded.metadata:
            self._by_study[item.get("study_uid", "")].append(item)
        self._by_label = self._group(lambda m: m.get("labels") or [])

    def _group(self, values_of) -> dict[str, np.ndarray]:
        groups = defaultdict(list)
        for i, item in enumerate(self.loaded.metadata):
            for value in values_of(item):
                if value:
                    groups[value.lower()].append(i)
        return {key: np.asarray(ids, dtype=np.int64) for key, ids in groups.items()}

    def loaded_study(self, study_uid: str) -> list[dict]:
        """The metadata of every indexed image of one study."""
        return self._by_study.get(study_uid, [])

    @cached_property
    def projections(self) -> list[str]:
        return sorted({m["projection"] for m in self.loaded.metadata if m.get("projection")})

    @cached_property
    def labels(self) -> list[str]:
        return sorted({label for m in self.loaded.metadata for label in m.get("labels") or []})

    def allowed_ids(self, projections=(), labels=()) -> np.ndarray | None:
        """Ids passing the filters (None: no filter); unknown values raise with the known ones."""
        allowed = None
        for values, groups, kind in ((projections, self._by_projection, "projection"),
                                     (labels, self._by_label, "label")):
            if not values:
                continue
            unknown = [v for v in values if v.lower() not in groups]
            if unknown:
                known = self.projections if kind == "projection" else self.labels
                listed = ", ".join(repr(v[:40]) for v in unknown[:5]) + (f" and {len(unknown) - 5} more"
                                                                         if len(unknown) > 5 else "")
                raise UnknownFilterError(f"unknown {kind} filter {listed}; this index has {known}")
            ids = np.unique(np.concatenate([groups[v.lower()] for v in values]))
            allowed = ids if allowed is None else np.intersect1d(allowed, ids)
        return allowed

    def search(self, query: np.ndarray, top_k: int, projections=(), labels=()) -> list[tuple[int, float]]:
        """[(id, score)] best first, at most top_k."""
        allowed = self.allowed_ids(projections, labels)
        population = self.index.ntotal if allowed is None else len(allowed)
        k = min(top_k, population)
        if k == 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self.on_gpu:
            return self._search_gpu(query, k, allowed)
        params = None if allowed is None else self._params(faiss.IDSelectorBatch(allowed))
        scores, ids = self.index.search(query, k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def _params(self, selector):
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.index.hnsw.efSearch)
        if isinstance(self.index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)
        return faiss.SearchParameters(sel=selector)

    def _search_gpu(self, query, k, allowed) -> list[tuple[int, float]]:
        fetch = min(GPU_MAX_K, self.index.ntotal if allowed is not None else k)
        scores, ids = self.index.search(query, fetch)
        keep = None if allowed is None else set(allowed.tolist())
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and (keep is None or int(i) in keep)]
        return hits[:k]
