"""The chunk cache both resumable builds keep their vectors in (no Triton: vectors are made up here)."""

from __future__ import annotations

import json
import threading

import numpy as np

from indexing import chunk_cache
from indexing.chunk_cache import ChunkCache

STATE = {"model": "cxr-mini", "export_sha256": "abc"}


def _vectors(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start * 4, (start + n) * 4, dtype=np.float32).reshape(n, 4)


def test_a_reopened_cache_keeps_its_chunks_and_skipped_keys(tmp_path):
    cache = ChunkCache(tmp_path / "c", STATE, key="position")
    cache.add_batch([0, 1], _vectors(2))
    cache.add_skipped(2, "file not found")
    cache.add_batch([3], _vectors(1, start=3))
    again = ChunkCache(tmp_path / "c", STATE, key="position")
    assert not again.reset and sorted(again.vectors) == [0, 1, 3] and again.skipped == {2: "file not found"}
    np.testing.assert_array_equal(again.vectors[3], _vectors(1, start=3)[0])
    assert all(again.done(k) for k in (0, 1, 2, 3)) and not again.done(4)
    again.add_batch([4], _vectors(1, start=4))  # numbered after the chunks there: none is overwritten
    assert sorted(ChunkCache(tmp_path / "c", STATE, key="position").vectors) == [0, 1, 3, 4]


def test_another_state_empties_the_cache(tmp_path):
    cache = ChunkCache(tmp_path / "c", STATE, key="position")
    cache.add_batch([0], _vectors(1))
    cache.add_skipped(1, "empty file (0 bytes)")
    other = ChunkCache(tmp_path / "c", dict(STATE, export_sha256="def"), key="position")
    assert other.reset and other.vectors == {} and other.skipped == {}
    assert json.loads((tmp_path / "c" / chunk_cache.STATE_FILE).read_text())["export_sha256"] == "def"


def test_leftovers_of_a_killed_write_are_removed_on_open(tmp_path):
    ChunkCache(tmp_path / "c", STATE, key="position").add_batch([0], _vectors(1))
    (tmp_path / "c" / "writing-chunk-000001.npz").write_bytes(b"half a chunk")
    (tmp_path / "c" / "writing-listed.jsonl").write_text("[")
    cache = ChunkCache(tmp_path / "c", STATE, key="position")
    assert list((tmp_path / "c").glob("writing-*")) == [] and sorted(cache.vectors) == [0]


def test_rows_travel_with_their_vectors_and_a_later_vector_clears_a_skip(tmp_path):
    cache = ChunkCache(tmp_path / "c", STATE, key="sop", keeps_rows=True)
    cache.add_skipped("1.2.3", "fetch failed: 503")
    cache.add_row("1.2.3", {"image_id": "a"})
    cache.add_batch(["1.2.3"], _vectors(1))
    again = ChunkCache(tmp_path / "c", STATE, key="sop", keeps_rows=True)
    assert again.rows == {"1.2.3": {"image_id": "a"}} and again.skipped == {} and again.added == 0


def test_many_chunks_are_merged_into_one_when_the_cache_opens(tmp_path, monkeypatch):
    monkeypatch.setattr(chunk_cache, "MAX_CHUNKS", 3)
    cache = ChunkCache(tmp_path / "c", STATE, key="sop", keeps_rows=True)
    for i in range(5):
        cache.add_row(f"1.{i}", {"image_id": str(i)})
        cache.add_batch([f"1.{i}"], _vectors(1, start=i))
    merged = ChunkCache(tmp_path / "c", STATE, key="sop", keeps_rows=True)
    assert [p.name for p in (tmp_path / "c").glob("chunk-*.npz")] == ["chunk-000005.npz"]
    assert sorted(merged.vectors) == [f"1.{i}" for i in range(5)] and merged.rows["1.4"] == {"image_id": "4"}
    np.testing.assert_array_equal(merged.vectors["1.2"], _vectors(1, start=2)[0])


def test_batches_and_skips_from_many_threads_all_land_on_disk(tmp_path):
    cache = ChunkCache(tmp_path / "c", STATE, key="position")

    def sender(thread: int):
        for i in range(20):
            key = thread * 100 + i
            if i % 5 == 0:
                cache.add_skipped(key, "not a readable image")
            else:
                cache.add_batch([key], _vectors(1, start=key))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.added == 8 * 16 and len(cache.skipped) == 8 * 4
    assert len(list((tmp_path / "c").glob("chunk-*.npz"))) == 8 * 16  # one each: no two threads wrote one file
    again = ChunkCache(tmp_path / "c", STATE, key="position")
    assert again.vectors.keys() == cache.vectors.keys() and again.skipped == cache.skipped
