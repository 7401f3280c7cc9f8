"""A FAISS build as its commits left it (cxr.store.faiss_changes): the build's rows deleted since, and
the rows added since with their vectors. FaissStore searches the added rows exactly beside the build;
a commit asks it which images are there. Immutable: taking in a commit makes a new Delta, so a search
holds one consistent state however long it runs.

Ids: the build's rows keep theirs (0..n-1); added rows follow, n + their position among the added ones.
An image id deleted at generation g removes the rows of that id written before g: the build's, and
those added by earlier commits. An image added again is deleted and added by the same commit, so its
new row survives its own deletion.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr.store.faiss_changes import Generation, read_deletion, read_segment
from cxr.store.image_table import ImageTable
from cxr.store.interface import Change, Filter


@dataclass(frozen=True)
class Plan:
    """What a change does to this state: image ids deleted, image ids replaced, and the rows to add
    (the last of each image id) with their vectors."""

    deleted: list[str]
    replaced: list[str]
    rows: list[dict]
    vectors: np.ndarray | None

    @property
    def removed(self) -> list[str]:
        """Ids whose rows written before the commit die with it: the deleted and the replaced."""
        return self.deleted + self.replaced


@dataclass(frozen=True)
class Delta:
    table: ImageTable  # the build's rows
    base: str  # the build's id (faiss_changes.base_id)
    number: int  # the generation taken in
    pending: int  # rows added or deleted since the build (Generation.pending)
    vectors: np.ndarray  # float32 [m, dim]: the added rows'
    rows: tuple[dict, ...]
    row_generation: np.ndarray  # int64 [m]: the commit that added each
    alive: np.ndarray  # bool [m]: not deleted since
    dead_base: frozenset[int]
    by_image: dict[str, list[int]]  # image id -> positions among the added rows
    by_study: dict[str, list[int]]

    @classmethod
    def of(cls, table: ImageTable, base: str, dim: int) -> Delta:
        """The build as written, no commit taken in."""
        return cls(table, base, 0, 0, np.zeros((0, dim), np.float32), (), np.zeros(0, np.int64), np.zeros(0, bool),
                   frozenset(), {}, {})

    @property
    def base_count(self) -> int:
        return self.table.count

    @property
    def count(self) -> int:
        """Images there now."""
        return self.table.count - len(self.dead_base) + int(self.alive.sum())

    @property
    def empty(self) -> bool:
        return not self.rows and not self.dead_base

    def extended(self, directory: Path, generation: Generation) -> Delta | None:
        """This state with the commits of `generation` after its own; None when they cannot be taken in
        (another build's, or a compaction folded commits this state has not seen)."""
        if not generation.applies_to(self.base, self.number):
            return None
        state = _Builder(self)
        for number in sorted({p.generation for p in generation.files() if p.generation > self.number}):
            for deletion in (d for d in generation.deletions if d.generation == number):
                state.delete(read_deletion(directory, deletion), number)
            for segment in (s for s in generation.segments if s[0].generation == number):
                state.add(*read_segment(directory, segment), number)
        return state.done(generation.number, generation.pending)

    # What a commit needs to know.

    def has(self, image_id: str) -> bool:
        if any(self.alive[p] for p in self.by_image.get(image_id, ())):
            return True
        return any(row not in self.dead_base for row in self.table.matching("image_id", image_id))

    def study_images(self, study_uid: str) -> list[str]:
        """The image ids of one study there now."""
        rows = [r for r in self.table.matching("study_uid", study_uid) if r not in self.dead_base]
        added = [self.rows[p]["image_id"] for p in self.by_study.get(study_uid, ()) if self.alive[p]]
        return list(dict.fromkeys(self.table.values("image_id", rows) + added))

    def plan(self, change: Change) -> Plan:
        deleted = [i for i in dict.fromkeys(change.image_ids) if self.has(i)]
        deleted += [i for study in dict.fromkeys(change.study_uids) for i in self.study_images(study)]
        deleted = list(dict.fromkeys(deleted))
        last = {row["image_id"]: n for n, row in enumerate(change.rows)}  # a repeated image: its last row
        keep = sorted(last.values())
        gone = set(deleted)
        replaced = [i for i in last if i not in gone and self.has(i)]
        vectors = change.vectors[keep] if keep else None
        return Plan(deleted, replaced, [change.rows[n] for n in keep], vectors)

    # What a search needs.

    @functools.cached_property
    def dead_bitmap(self) -> np.ndarray | None:
        """The build's deleted rows as a FAISS bitmap (None: none deleted)."""
        if not self.dead_base:
            return None
        member = np.zeros(self.table.count, bool)
        member[np.fromiter(self.dead_base, np.int64, len(self.dead_base))] = True
        return np.packbits(member, bitorder="little")

    def added_rows(self, positions, reports: dict[str, dict]) -> list[dict]:
        """Added rows (by position), each with its study's report fields when one arrived since."""
        return [dict(self.rows[p], **reports.get(self.rows[p]["study_uid"], {})) for p in positions]

    def passing(self, flt: Filter, reports: dict[str, dict]) -> np.ndarray:
        """Which added rows are there and pass `flt` (labels as reports left them)."""
        passes = self.alive.copy()
        if not flt:
            return passes
        projections = {p.lower() for p in flt.projections}
        labels = {label.lower() for label in flt.labels}
        for position in np.flatnonzero(passes):
            row = self.added_rows([position], reports)[0]
            passes[position] = ((not projections or str(row.get("projection", "")).lower() in projections)
                                and (not labels or bool(labels & {x.lower() for x in row.get("labels") or ()}))
                                and flt.passes_date(str(row.get("study_date") or ""))
                                and not flt.excluded(row))
        return passes

    @functools.cached_property
    def label_names(self) -> frozenset[str]:
        """Labels of the added rows there now."""
        return frozenset(label for p in np.flatnonzero(self.alive) for label in self.rows[p].get("labels") or ())

    @functools.cached_property
    def projection_names(self) -> frozenset[str]:
        return frozenset(self.rows[p]["projection"] for p in np.flatnonzero(self.alive) if self.rows[p].get("projection"))


class _Builder:
    """The next Delta, assembled from one Delta and the commits after it."""

    def __init__(self, delta: Delta):
        self.delta = delta
        self.vectors = [delta.vectors]
        self.rows = list(delta.rows)
        self.row_generation = [delta.row_generation]
        self.alive = delta.alive.copy()
        self.dead_base = set(delta.dead_base)
        self.by_image = {k: list(v) for k, v in delta.by_image.items()}
        self.by_study = {k: list(v) for k, v in delta.by_study.items()}
        self.added_alive: list[bool] = []

    def delete(self, image_ids: list[str], number: int) -> None:
        generations = np.concatenate(self.row_generation)
        for image_id in image_ids:
            self.dead_base.update(self.delta.table.matching("image_id", image_id))
            for position in self.by_image.get(image_id, ()):
                if generations[position] < number:
                    self._kill(position)

    def _kill(self, position: int) -> None:
        if position < len(self.alive):
            self.alive[position] = False
        else:
            self.added_alive[position - len(self.alive)] = False

    def add(self, vectors: np.ndarray, rows: list[dict], number: int) -> None:
        start = len(self.rows)
        self.vectors.append(np.asarray(vectors, np.float32))
        self.rows.extend(rows)
        self.row_generation.append(np.full(len(rows), number, np.int64))
        self.added_alive.extend([True] * len(rows))
        for position, row in enumerate(rows, start):
            self.by_image.setdefault(row["image_id"], []).append(position)
            self.by_study.setdefault(row.get("study_uid", ""), []).append(position)

    def done(self, number: int, pending: int) -> Delta:
        return replace(self.delta, number=number, pending=pending, vectors=np.concatenate(self.vectors),
                       rows=tuple(self.rows), row_generation=np.concatenate(self.row_generation),
                       alive=np.concatenate([self.alive, np.asarray(self.added_alive, bool)]),
                       dead_base=frozenset(self.dead_base), by_image=self.by_image, by_study=self.by_study)
