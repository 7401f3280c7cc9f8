"""Concurrent searches travel together off the event loop, and each caller gets its own answer."""

import asyncio
import threading
import time

import numpy as np
import pytest

from cxr.store import faiss_store, faiss_writer
from cxr.store.interface import Filter
from gateway.search_batcher import SearchBatcher
from support import index_metadata, unit_vectors


class SlowStore:
    """Wraps a real store; records each batched call and takes `delay` seconds, on the calling thread."""

    inline_search = False  # slow on purpose: it must go to the search thread

    def __init__(self, store, delay=0.05):
        self.store = store
        self.delay = delay
        self.calls: list[tuple[int, Filter, str]] = []

    def search(self, queries, k, flt=Filter()):
        self.calls.append((len(queries), flt, threading.current_thread().name))
        time.sleep(self.delay)
        return self.store.search(queries, k, flt)

    def rows(self, ids):
        return self.store.rows(ids)


@pytest.fixture
def store(tmp_path):
    vectors = unit_vectors(300)
    faiss_writer.write(tmp_path / "idx", vectors, index_metadata(300), {"model": "m"}, [], "flat")
    return vectors, faiss_store.load(tmp_path / "idx")


def test_concurrent_queries_are_searched_together_and_answered_each_their_own(store):
    vectors, real = store
    slow = SlowStore(real)
    batcher = SearchBatcher(slow, max_batch=64, wait_s=0.001)

    async def main():
        return await asyncio.gather(*(batcher.search(vectors[i], 3) for i in range(40)))

    answers = asyncio.run(main())
    assert [a[0][0] for a in answers] == list(range(40))  # each query's best hit is itself
    assert answers[5][0][2]["image_id"] == "5" and len(answers[5]) == 3
    assert len(slow.calls) < 5 and sum(n for n, _, _ in slow.calls) == 40
    assert all(name.startswith("search-") for _, _, name in slow.calls)  # not on the event loop's thread


def test_the_event_loop_keeps_running_while_a_search_runs(store):
    vectors, real = store
    batcher = SearchBatcher(SlowStore(real, delay=0.3), wait_s=0)

    async def main():
        search = asyncio.create_task(batcher.search(vectors[0], 1))
        ticks = 0
        while not search.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks

    assert asyncio.run(main()) > 10


def test_filters_are_searched_apart_and_each_query_keeps_its_k(store):
    vectors, real = store
    slow = SlowStore(real)
    batcher = SearchBatcher(slow, wait_s=0.01)
    effusion = Filter.of(labels=["Effusion"])

    async def main():
        return await asyncio.gather(batcher.search(vectors[0], 2), batcher.search(vectors[1], 7, effusion),
                                    batcher.search(vectors[2], 5), batcher.search(vectors[3], 1, effusion))

    answers = asyncio.run(main())
    assert [len(a) for a in answers] == [2, 7, 5, 1]
    assert all(int(row["image_id"]) % 3 == 0 for _, _, row in answers[1])
    assert sorted((n, bool(f)) for n, f, _ in slow.calls) == [(2, False), (2, True)]


def test_a_failing_search_fails_every_caller_of_its_batch_and_the_next_batch_runs(store):
    vectors, real = store

    class Flaky(SlowStore):
        def search(self, queries, k, flt=Filter()):
            if not self.calls:
                self.calls.append((len(queries), flt, ""))
                raise RuntimeError("disk gone")
            return super().search(queries, k, flt)

    batcher = SearchBatcher(Flaky(real), wait_s=0.01)

    async def main():
        first = await asyncio.gather(*(batcher.search(vectors[i], 1) for i in range(3)), return_exceptions=True)
        return first, await batcher.search(vectors[4], 1)

    first, later = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in first)
    assert later[0][0] == 4


def test_a_caller_that_leaves_does_not_disturb_the_others(store):
    vectors, real = store
    batcher = SearchBatcher(SlowStore(real, delay=0.1), wait_s=0)

    async def main():
        leaving = asyncio.create_task(batcher.search(vectors[0], 1))
        staying = asyncio.create_task(batcher.search(vectors[1], 1))
        await asyncio.sleep(0.01)
        leaving.cancel()
        return await staying, await asyncio.gather(leaving, return_exceptions=True)

    staying, (left,) = asyncio.run(main())
    assert staying[0][0] == 1 and isinstance(left, asyncio.CancelledError)


def test_batched_answers_equal_direct_searches(store):
    vectors, real = store
    batcher = SearchBatcher(real, wait_s=0.001)
    queries = unit_vectors(30, seed=9)

    async def main():
        return await asyncio.gather(*(batcher.search(q, 10) for q in queries))

    answers = asyncio.run(main())
    direct = real.search(queries, 10)
    assert [[i for i, _, _ in a] for a in answers] == [[i for i, _ in d] for d in direct]
    np.testing.assert_allclose([s for a in answers for _, s, _ in a], [s for d in direct for _, s in d], rtol=1e-6)


def test_a_small_exact_index_is_searched_on_the_loop_without_a_thread_hop(store):
    vectors, real = store
    assert real.inline_search
    batcher = SearchBatcher(real)
    queries = unit_vectors(5, seed=4)

    async def main():
        return [await batcher.search(q, 7) for q in queries]

    answers = asyncio.run(main())
    assert [[i for i, _, _ in a] for a in answers] == [[i for i, _ in d] for d in real.search(queries, 7)]
    assert answers[0][0][2] == real.rows([answers[0][0][0]])[0]
    assert not batcher._thread._threads  # the search thread was never started
