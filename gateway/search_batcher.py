"""Searches leave the event loop and travel together.

A search of a million vectors takes tens of milliseconds; run on the event loop it would stall
every other call. Each index gets one worker thread. Queries that arrive while it is busy wait
together and go as one batched search when it is free, which FAISS answers in about the time of
a few single ones (one pass over memory, all cores). After an idle spell the first query can be
made to wait up to `wait_s` for company (off by default: under load, company comes by itself).
A store too small to be worth a thread hop (`inline_search`, e.g. a few thousand exact vectors) is
searched right on the event loop.
Queries with different filters go in separate batched searches (FAISS takes one filter per call);
a batch serves each query's own k.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cxr.store.interface import Filter, Hits, VectorStore

Found = list[tuple[int, float, dict]]  # (id, score, metadata row), best first


@dataclass
class _Query:
    vector: np.ndarray
    k: int
    flt: Filter
    answer: asyncio.Future | None  # None: searched inline, nobody waits


class SearchBatcher:
    def __init__(self, store: VectorStore, max_batch: int = 64, wait_s: float = 0.0, metrics=None, name: str = ""):
        self.store = store
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.metrics = metrics
        self.name = name
        self._waiting: list[_Query] = []
        self._worker: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"search-{name}")

    async def search(self, vector: np.ndarray, k: int, flt: Filter = Filter()) -> Found:
        if self.store.inline_search:
            if self.metrics is not None:
                self.metrics.search_batch_size.labels(self.name).observe(1)
            (found,) = _search_groups(self.store, [_Query(vector, k, flt, None)])
            return found
        query = _Query(vector, k, flt, asyncio.get_running_loop().create_future())
        self._waiting.append(query)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await query.answer

    async def _drain(self) -> None:
        if self.wait_s > 0 and len(self._waiting) < self.max_batch:
            await asyncio.sleep(self.wait_s)
        while self._waiting:
            batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            batch = [q for q in batch if not q.answer.done()]  # callers past their deadline have left
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Query]) -> None:
        if self.metrics is not None:
            self.metrics.search_batch_size.labels(self.name).observe(len(batch))
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self._thread, _search_groups, self.store, batch)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the reason, none hangs
            for query in batch:
                if not query.answer.done():
                    query.answer.set_exception(exc)
            return
        for query, hits in zip(batch, answers):
            if not query.answer.done():
                query.answer.set_result(hits)

    def close(self) -> None:
        """Searches already running finish; the thread ends after them."""
        self._thread.shutdown(wait=False)


def _search_groups(store: VectorStore, batch: list[_Query]) -> list[Found]:
    """One batched search per filter, then one metadata read for every hit; answers in the batch's order."""
    groups: dict[Filter, list[int]] = defaultdict(list)
    for position, query in enumerate(batch):
        groups[query.flt].append(position)
    answers: list[Hits] = [[] for _ in batch]
    for flt, positions in groups.items():
        k = max(batch[p].k for p in positions)
        found = store.search(np.stack([batch[p].vector for p in positions]), k, flt)
        for position, hits in zip(positions, found):
            answers[position] = hits[:batch[position].k]
    rows = store.rows([i for hits in answers for i, _ in hits])
    found, start = [], 0
    for hits in answers:
        found.append([(i, score, row) for (i, score), row in zip(hits, rows[start:start + len(hits)])])
        start += len(hits)
    return found
