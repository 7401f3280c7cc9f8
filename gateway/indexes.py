"""The FAISS index of each exported model. Loaded at start-up and reloaded when `cxr index build`
swaps in a new one (the health task calls `refresh`), so no restart is needed. A missing or
mismatched index is remembered and reported on every query for that model (FAILED_PRECONDITION)."""

from __future__ import annotations

import threading
from pathlib import Path

from cxr import index_store
from cxr.catalog import ExportedModel
from cxr.errors import CxrError
from gateway.search import IndexSearcher


class IndexSet:
    def __init__(self, index_dir: Path, catalog: dict[str, ExportedModel], use_gpu: bool = False):
        self.index_dir = index_dir
        self.catalog = catalog
        self.use_gpu = use_gpu
        self._searchers: dict[str, IndexSearcher] = {}
        self._errors: dict[str, CxrError] = {}
        self._versions: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self.refresh()

    def _version(self, name: str) -> int | None:
        try:
            return (self.index_dir / name / index_store.MANIFEST_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def refresh(self) -> None:
        """(Re)load every index whose manifest appeared or changed since the last look."""
        for name, model in self.catalog.items():
            version = self._version(name)
            if name in self._versions and self._versions[name] == version:
                continue
            try:
                loaded = index_store.load(self.index_dir / name, model=name, dim=model.embed_dim)
                searcher, error = IndexSearcher(loaded, use_gpu=self.use_gpu), None
            except (index_store.IndexMissingError, index_store.IndexMismatchError) as exc:
                searcher, error = None, exc
            with self._lock:
                self._versions[name] = version
                self._searchers.pop(name, None)
                self._errors.pop(name, None)
                if searcher:
                    self._searchers[name] = searcher
                else:
                    self._errors[name] = error

    def searcher(self, model: ExportedModel) -> IndexSearcher:
        with self._lock:
            if model.name in self._searchers:
                return self._searchers[model.name]
            raise self._errors.get(model.name) or index_store.IndexMissingError(f"no index for {model.name}")

    def get(self, name: str) -> index_store.LoadedIndex | None:
        with self._lock:
            searcher = self._searchers.get(name)
        return searcher.loaded if searcher else None

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._searchers
