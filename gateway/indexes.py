"""The index of each exported model, from the configured vector store (cxr.store.factory.backend):
opened at start-up and again when `cxr index build` swaps in a new one (the health watcher calls
`refresh`), so no restart is needed. Each index is searched through its own SearchBatcher.

A new build is checked before it replaces the index in service: its files against the checksums
in its manifest, its model, dimension and export against what the gateway serves. A build that
fails the check is refused with one log line and the previous index keeps serving; without a
previous one, queries for that model get the reason (FAILED_PRECONDITION). A removed index stops
being served.

A build is identified by what the backend's `version` says (for FAISS: a stat of the manifest and of
every file it lists), so a file truncated in place is refused like a bad build, and the good file
copied back is served again, with no need to touch the manifest. `problem` says in a few words why
a model's index is not served (missing, corrupt, mismatched, unreadable, unreachable), for the
health log.

Commits to a build in service (StoreBackend.apply: images added, replaced, deleted) do not reload it: a
thread (`start`) has each store in service take them in every `changes_poll_s` (VectorStore.refresh),
and a build swapped in takes them in just before it serves, under the same lock, so a commit seen by
the store in service is never unseen by the next one."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from cxr.catalog import ExportedModel
from cxr.errors import CxrError
from cxr.store.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexUnreadableError,
    StoreUnavailableError,
)
from cxr.store.interface import StoreBackend, VectorStore
from gateway.search_batcher import SearchBatcher

log = logging.getLogger("cxr.gateway.indexes")
SWAP_SETTLE_S = 0.2  # `cxr index build` swaps folders with two renames: look twice before calling it removed
PROBLEMS = ((IndexMissingError, "missing"), (IndexMismatchError, "mismatched"), (IndexCorruptError, "corrupt"),
            (IndexUnreadableError, "unreadable"), (StoreUnavailableError, "unreachable"))
REASON_CHARS = 80  # of the error's message in `problem`: the whole of it is in the log line of the refusal


class IndexSet:
    def __init__(self, backend: StoreBackend, catalog: dict[str, ExportedModel], metrics=None, batch_max: int = 64,
                 batch_wait_s: float = 0.0, prepare: Callable[[str, VectorStore], None] | None = None,
                 changes_poll_s: float = 0.2):
        """`backend`: the FAISS or Milvus backend (cxr.store.factory), or a fake in tests. `prepare(model,
        store)` is called with each build opened, before it is served (the report feed applies the reports
        received since the build, so they do not vanish from hits for a moment at every swap)."""
        self.backend = backend
        self.prepare = prepare
        self.catalog = catalog
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self._searchers: dict[str, SearchBatcher] = {}
        self._errors: dict[str, CxrError] = {}
        self._versions: dict[str, object] = {}  # whatever the backend says identifies a build
        self._lock = threading.Lock()
        self._changing = threading.Lock()  # a store taking in commits, or a build swapped in
        self.changes_poll_s = changes_poll_s
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_commits, name="index-commits", daemon=True)
        self._commit_errors: dict[str, str] = {}  # model -> the last refusal logged, so it is logged once
        if metrics is not None:
            for name in catalog:
                metrics.index_load_failures.labels(name)  # at 0 from the start
        self.refresh()

    def _version(self, name: str):
        try:
            return self.backend.version(name)
        except StoreUnavailableError as exc:
            log.warning("cannot look for a new index of %s: %s", name, exc)
            return self._versions.get(name)

    def refresh(self) -> None:
        """(Re)load every index whose files appeared, changed or went since the last look."""
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
        where = self.backend.where(name)
        try:
            store = self.backend.open(name, dim=model.embed_dim, export_sha256=model.export_sha256)
        except IndexMissingError as exc:
            self._set(name, None, exc)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a damaged build raises, keep serving the last good one
            error = exc if isinstance(exc, CxrError) else IndexCorruptError(f"{where}: {exc}")
            if isinstance(exc, StoreUnavailableError):
                self._versions.pop(name, None)  # look again next time
            self._refuse(name, error)
            return
        self._prepare(name, store)
        log.info("serving index %s: %d vectors, %s, built %s", where, store.count, store.index_type,
                 store.manifest.get("created"))
        with self._changing:
            self._take_in(name, store)
            self._set(name, SearchBatcher(store, self.batch_max, self.batch_wait_s, self.metrics, name), None)

    def start(self) -> None:
        """Have the stores in service take in new commits every changes_poll_s, until `close`."""
        self._watcher.start()

    def _watch_commits(self) -> None:
        while not self._stop.wait(self.changes_poll_s):
            self.take_in_commits()

    def take_in_commits(self) -> None:
        """Every store in service takes in the commits made since its last look."""
        with self._lock:
            searchers = dict(self._searchers)
        for name, searcher in searchers.items():
            with self._changing:
                self._take_in(name, searcher.store)

    def _take_in(self, name: str, store: VectorStore) -> None:
        try:
            if store.refresh() and self.metrics is not None:
                self.metrics.index_vectors.labels(name).set(store.count)
            self._commit_errors.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - a damaged commit: the state taken in last keeps serving
            if self._commit_errors.get(name) != str(exc):
                log.error("cannot take in the latest commit to the index of %s, serving the state before it: %s",
                          name, exc)
                self._commit_errors[name] = str(exc)

    def _prepare(self, name: str, store: VectorStore) -> None:
        if self.prepare is None:
            return
        try:
            self.prepare(name, store)
        except Exception:  # noqa: BLE001 - what prepare adds must not keep a good build from serving
            log.exception("could not prepare the new index of %s; serving it as built", name)

    def _refuse(self, name: str, error: CxrError) -> None:
        if self.metrics is not None:
            self.metrics.index_load_failures.labels(name).inc()
        if self.has(name):
            log.error("refused the new index build for %s, still serving the previous one: %s", name, error)
        else:
            log.error("no index served for %s: %s", name, error)
            self._set(name, None, error)

    def _set(self, name: str, searcher: SearchBatcher | None, error: CxrError | None) -> None:
        with self._lock:
            previous = self._searchers.pop(name, None)
            self._errors.pop(name, None)
            if searcher is not None:
                self._searchers[name] = searcher
            elif error is not None:
                self._errors[name] = error
        if previous is not None and searcher is None:
            log.warning("index for %s removed: no longer served (%s)", name, error)
        # The previous batcher is not closed: calls that took it before the swap still search with it
        # (its files stay mapped); its thread ends when the last of them lets it go.
        if self.metrics is not None:
            store = searcher.store if searcher else None
            self.metrics.index_vectors.labels(name).set(store.count if store else 0)
            created = store.manifest.get("created") if store else None
            self.metrics.index_created.labels(name).set(_timestamp(created))

    def index(self, name: str) -> SearchBatcher:
        """The model's index in service (its store is `.store`), or the reason there is none, raised."""
        with self._lock:
            if name in self._searchers:
                return self._searchers[name]
            raise self._errors.get(name) or IndexMissingError(f"no index for {name}")

    def close(self) -> None:
        """Stop every searcher and its store, then the backend (Milvus: the connection the stores share)."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5.0)
        with self._lock:
            searchers, self._searchers = list(self._searchers.values()), {}
        for searcher in searchers:
            searcher.close()
            searcher.store.close()
        self.backend.close()

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._searchers

    def problem(self, name: str) -> str | None:
        """Why the model's index is not served, in a few words: "missing", or "corrupt", "mismatched",
        "unreadable", "unreachable" or "refused" with the first words of the reason; None while it is
        loaded and its store answers (a Milvus cluster can be down while its index stays known). May
        ask the store: call it off the event loop."""
        with self._lock:
            searcher, error = self._searchers.get(name), self._errors.get(name)
        if searcher is not None:
            return None if searcher.store.ready() else "unreachable (its store does not answer)"
        if error is None or isinstance(error, IndexMissingError):
            return "missing"
        kind = next((word for error_type, word in PROBLEMS if isinstance(error, error_type)), "refused")
        return f"{kind} ({_first_words(str(error).replace(self.backend.where(name), name))})"

    def apply(self, name: str, change):
        """Commit `change` (a cxr.store.interface.Change) to the model's build in service and have the store in
        service take it in before returning what the backend committed (its Committed): no search begun after
        this sees what it deleted. Refused, with the reason `index` gives, when this gateway serves no index of
        the model. Blocks: call it off the event loop."""
        self.index(name)
        committed = self.backend.apply(name, change)
        with self._changing:  # a build swapped in meanwhile has taken the commit in under this lock
            store = self.index(name).store
            if store.refresh() and self.metrics is not None:  # raises on a commit it cannot take in: no answer
                self.metrics.index_vectors.labels(name).set(store.count)  # the watcher's next look finds nothing
        return committed


def _first_words(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS].rsplit(" ", 1)[0] + " …"


def _timestamp(created: str | None) -> float:
    try:
        return dt.datetime.fromisoformat(created).timestamp() if created else 0.0
    except ValueError:
        return 0.0
