"""The FAISS index of each exported model. Loaded at start-up and reloaded when `cxr index build`
swaps in a new one (the health watcher calls `refresh`), so no restart is needed.

A new build is checked before it replaces the index in service: its files against the checksums
in its manifest, its model, dimension and export against what the gateway serves. A build that
fails the check is refused with one log line and the previous index keeps serving; without a
previous one, queries for that model get the reason (FAILED_PRECONDITION). A removed index stops
being served."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

from cxr import index_store
from cxr.catalog import ExportedModel
from cxr.errors import CxrError
from gateway.search import IndexSearcher

log = logging.getLogger("cxr.gateway.indexes")
SWAP_SETTLE_S = 0.2  # `cxr index build` swaps folders with two renames: look twice before calling it removed


class IndexSet:
    def __init__(self, index_dir: Path, catalog: dict[str, ExportedModel], use_gpu: bool = False, metrics=None):
        self.index_dir = index_dir
        self.catalog = catalog
        self.use_gpu = use_gpu
        self.metrics = metrics
        self._searchers: dict[str, IndexSearcher] = {}
        self._errors: dict[str, CxrError] = {}
        self._versions: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.Lock()
        if metrics is not None:
            for name in catalog:
                metrics.index_load_failures.labels(name)  # at 0 from the start
        self.refresh()

    def _version(self, name: str) -> tuple[int, int] | None:
        """The manifest's modification time and inode: a folder swapped in is seen even with old times."""
        try:
            stat = (self.index_dir / name / index_store.MANIFEST_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def refresh(self) -> None:
        """(Re)load every index whose manifest appeared, changed or went since the last look."""
        for name, model in self.catalog.items():
            version = self._version(name)
            if name in self._versions and self._versions[name] == version:
                continue
            if version is None and self.has(name):
                time.sleep(SWAP_SETTLE_S)
                version = self._version(name)
                if version is not None:
                    continue  # a swap in progress: the next look loads the new build
            self._versions[name] = version
            self._load(name, model)

    def _load(self, name: str, model: ExportedModel) -> None:
        directory = self.index_dir / name
        try:
            searcher = IndexSearcher(index_store.load(directory, model=name, dim=model.embed_dim,
                                                      export_sha256=model.export_sha256), use_gpu=self.use_gpu)
        except index_store.IndexMissingError as exc:
            self._set(name, None, exc)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a damaged build raises, keep serving the last good one
            error = exc if isinstance(exc, CxrError) else index_store.IndexCorruptError(f"{directory}: {exc}")
            self._refuse(name, error)
            return
        log.info("serving index %s: %d vectors, %s, built %s", directory, searcher.loaded.index.ntotal,
                 searcher.loaded.manifest.get("index_type"), searcher.loaded.manifest.get("created"))
        self._set(name, searcher, None)

    def _refuse(self, name: str, error: CxrError) -> None:
        if self.metrics is not None:
            self.metrics.index_load_failures.labels(name).inc()
        if self.has(name):
            log.error("refused the new index build for %s, still serving the previous one: %s", name, error)
        else:
            log.error("no index served for %s: %s", name, error)
            self._set(name, None, error)

    def _set(self, name: str, searcher: IndexSearcher | None, error: CxrError | None) -> None:
        with self._lock:
            had = name in self._searchers
            self._searchers.pop(name, None)
            self._errors.pop(name, None)
            if searcher is not None:
                self._searchers[name] = searcher
            elif error is not None:
                self._errors[name] = error
        if had and searcher is None:
            log.warning("index for %s removed: no longer served (%s)", name, error)
        if self.metrics is not None:
            loaded = searcher.loaded if searcher else None
            self.metrics.index_vectors.labels(name).set(loaded.index.ntotal if loaded else 0)
            created = loaded.manifest.get("created") if loaded else None
            self.metrics.index_created.labels(name).set(_timestamp(created))

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


def _timestamp(created: str | None) -> float:
    try:
        return dt.datetime.fromisoformat(created).timestamp() if created else 0.0
    except ValueError:
        return 0.0
