"""The on-disk cache a resumable build keeps its encoded vectors in: a killed build resumes from it.

One directory: `state.json` (what the vectors were made from: another model, archive or export
empties the cache), append-only `chunk-NNNNNN.npz` files of keys and vectors (and, where the rows
are not known without fetching again, their index rows), and `skipped.jsonl` (what could not be
read, and why). Every file is written as `writing-<name>` and renamed, so a kill leaves either the
whole file or a leftover that the next open removes. Batches return on several sender threads:
what they share is locked.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Hashable, Iterable
from pathlib import Path

import numpy as np

STATE_FILE = "state.json"
SKIPPED_FILE = "skipped.jsonl"
WRITING = "writing-"  # prefix of a file not yet whole
MAX_CHUNKS = 64  # more chunk files than this (a long follow): merged into one when the cache opens


class ChunkCache:
    """Vectors keyed by `key` (e.g. an archive position or a SOPInstanceUID), kept in chunks on disk.

    `key` names the keys on disk (`<key>s` in each chunk, `<key>` in skipped.jsonl). With
    `keeps_rows`, each key's index row goes in the chunk beside its vector: `add_row` first, then
    `add_batch` with the vector."""

    def __init__(self, directory: Path, state: dict, key: str, keeps_rows: bool = False):
        self.directory, self.key, self.keeps_rows = directory, key, keeps_rows
        self.reset = self._open(state)
        self.vectors: dict[Hashable, np.ndarray] = {}
        self.rows: dict[Hashable, dict] = {}
        self._chunks = self._load_chunks()
        self.skipped = self._load_skipped()
        self._waiting_rows: dict[Hashable, dict] = {}  # rows of keys whose vector is not back yet
        self._lock = threading.Lock()
        self.added = 0  # vectors added since the cache opened

    def _open(self, state: dict) -> bool:
        """Make the directory hold `state`'s cache; True when one of another state was thrown away."""
        existing = self.directory / STATE_FILE
        reset = existing.is_file() and json.loads(existing.read_text()) != state
        if reset:
            shutil.rmtree(self.directory)  # vectors of another model, archive or export are worthless here
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(WRITING + "*"):  # a file a killed build did not finish
            leftover.unlink()
        self.replace_file(STATE_FILE, json.dumps(state))
        return reset

    def _load_chunks(self) -> int:
        """Load every chunk; returns the next chunk's number."""
        chunks = sorted(self.directory.glob("chunk-*.npz"))
        for chunk in chunks:
            with np.load(chunk) as data:
                keys = data[self.key + "s"].tolist()
                self.vectors.update(zip(keys, data["vectors"]))
                if "rows" in data.files:
                    self.rows.update(zip(keys, (json.loads(row) for row in data["rows"].tolist())))
        number = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
        if len(chunks) > MAX_CHUNKS:
            self._write_chunk(number, list(self.vectors), np.stack(list(self.vectors.values())))
            for chunk in chunks:  # only once the merged chunk is in place: a kill here loses nothing
                chunk.unlink()
            number += 1
        return number

    def _load_skipped(self) -> dict:
        skipped = {}
        for line in self.lines(SKIPPED_FILE):
            item = json.loads(line)
            skipped[item[self.key]] = item["reason"]
        return {key: reason for key, reason in skipped.items() if key not in self.vectors}

    def _write_chunk(self, number: int, keys: list, vectors: np.ndarray) -> None:
        arrays = {self.key + "s": np.asarray(keys), "vectors": vectors}
        if self.keeps_rows:
            arrays["rows"] = np.asarray([json.dumps(self.rows[key]) for key in keys], dtype=str)
        final = self.directory / f"chunk-{number:06d}.npz"
        temporary = final.with_name(WRITING + final.name)
        with temporary.open("wb") as f:
            np.savez(f, **arrays)
        temporary.rename(final)

    def done(self, key: Hashable) -> bool:
        """Encoded or found unreadable already."""
        return key in self.vectors or key in self.skipped

    def add_row(self, key: Hashable, row: dict) -> None:
        """`key`'s index row, kept with its vector when that comes (`keeps_rows` caches only)."""
        with self._lock:
            self._waiting_rows[key] = row

    def add_batch(self, keys: list, vectors: np.ndarray) -> None:
        """Vectors that came back: on disk as one chunk before they count as done."""
        with self._lock:
            number, self._chunks = self._chunks, self._chunks + 1
            if self.keeps_rows:
                for key in keys:
                    self.rows[key] = self._waiting_rows.pop(key)
        self._write_chunk(number, keys, vectors)
        with self._lock:
            self.vectors.update(zip(keys, vectors))
            for key in keys:
                self.skipped.pop(key, None)
            self.added += len(keys)

    def add_skipped(self, key: Hashable, reason: str) -> None:
        with self._lock:
            self._waiting_rows.pop(key, None)
            self.append_lines(SKIPPED_FILE, [json.dumps({self.key: key, "reason": reason})])
            self.skipped[key] = reason

    def discard(self) -> None:
        """The build is written: its cache is no longer needed."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def lines(self, name: str) -> list[str]:
        """The non-blank lines of one of the cache's files (none if it is not there)."""
        path = self.directory / name
        return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def replace_file(self, name: str, text: str) -> None:
        """Write one of the cache's files whole, or not at all."""
        temporary = self.directory / (WRITING + name)
        temporary.write_text(text)
        temporary.rename(self.directory / name)

    def append_lines(self, name: str, lines: Iterable[str]) -> None:
        with (self.directory / name).open("a") as f:
            f.write("".join(line + "\n" for line in lines))
