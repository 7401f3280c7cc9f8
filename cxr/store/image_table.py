"""Per-image metadata as memory-mapped columns: what a hit shows, what filters select, what a study holds.

A million images as Python dicts take ~1.8 GB and seconds to parse; as columns they take their
bytes on disk and are paged in only where read. One folder, one row per vector, in id order:

  <column>.bytes + <column>.offsets.npy   text columns: UTF-8 concatenated, row i is bytes[off[i]:off[i+1]]
  labels.codes.npy + labels.offsets.npy    each row's labels, as codes into table.json's label names
  projection.codes.npy                     each row's projection, as a code into table.json's names
  study.order.npy                          row ids sorted by study_uid, for a study's images by bisection
  image.order.npy                          row ids sorted by image_id, for one image's row (thumbnails)
  table.json                               row count, columns, label and projection names

Filters become bitmaps (one bit per row, FAISS IDSelectorBitmap's bit order), built once per value
at load, then OR-ed within a kind and AND-ed across kinds per query.

Reports that arrive after the build (cxr.reports) are held in memory, not written into the columns:
`amend` replaces the report fields and labels of a study's rows, and the label bitmaps with them.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxr.store.errors import UnknownFilterError

TEXT_COLUMNS = ("image_id", "study_uid", "filename", "path", "findings", "impression", "indication", "patient_id",
                "study_instance_uid", "series_instance_uid", "sop_instance_uid", "accession_number", "study_date",
                "view_position", "patient_name")  # an index written before a column existed reads it as ""
TABLE_FILE = "table.json"
ORDER_FILES = {"study_uid": "study.order.npy", "image_id": "image.order.npy"}
NO_VALUE = -1


class TableWriter:
    """Appends rows (dicts as Record.metadata() gives them) in chunks, so ten million rows never sit in
    memory at once; `close` writes the lookup files."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._text = {name: (directory / f"{name}.bytes").open("wb") for name in TEXT_COLUMNS}
        self._ends = {name: [np.zeros(1, np.uint64)] for name in TEXT_COLUMNS}
        self._written = dict.fromkeys(TEXT_COLUMNS, 0)
        self._labels: dict[str, int] = {}
        self._projections: dict[str, int] = {}
        self._label_codes: list[np.ndarray] = []
        self._label_ends: list[np.ndarray] = [np.zeros(1, np.uint64)]
        self._label_count = 0
        self._projection_codes: list[np.ndarray] = []
        self.count = 0

    def append(self, rows: list[dict]) -> None:
        for name in TEXT_COLUMNS:
            encoded = [str(row.get(name) or "").encode() for row in rows]
            self._text[name].write(b"".join(encoded))
            ends = self._written[name] + np.cumsum([len(e) for e in encoded], dtype=np.uint64)
            self._written[name] = int(ends[-1]) if len(ends) else self._written[name]
            self._ends[name].append(ends)
        codes = [self._labels.setdefault(label, len(self._labels)) for row in rows for label in row.get("labels") or ()]
        self._label_codes.append(np.asarray(codes, np.int32))
        self._label_ends.append(self._label_count + np.cumsum([len(row.get("labels") or ()) for row in rows],
                                                              dtype=np.uint64))
        self._label_count += len(codes)
        self._projection_codes.append(np.asarray(
            [self._projections.setdefault(row["projection"], len(self._projections)) if row.get("projection")
             else NO_VALUE for row in rows], np.int16))
        self.count += len(rows)

    def close(self) -> None:
        for name, f in self._text.items():
            f.close()
            np.save(self.directory / f"{name}.offsets.npy", _narrow(np.concatenate(self._ends[name])))
        np.save(self.directory / "labels.codes.npy", np.concatenate(self._label_codes or [np.zeros(0, np.int32)]))
        np.save(self.directory / "labels.offsets.npy", _narrow(np.concatenate(self._label_ends)))
        np.save(self.directory / "projection.codes.npy",
                np.concatenate(self._projection_codes or [np.zeros(0, np.int16)]))
        for column, order_file in ORDER_FILES.items():
            np.save(self.directory / order_file, _TextColumn(self.directory, column).sort_order())
        (self.directory / TABLE_FILE).write_text(json.dumps(
            {"rows": self.count, "columns": list(TEXT_COLUMNS), "labels": list(self._labels),
             "projections": list(self._projections)}, indent=1))


def _order(directory: Path, column: str, name: str) -> np.ndarray:
    """A column's sort order, memory-mapped; computed here for a table written before the file existed."""
    path = directory / name
    return np.load(path, mmap_mode="r") if path.is_file() else _TextColumn(directory, column).sort_order()


def _narrow(offsets: np.ndarray) -> np.ndarray:
    """Offsets in 4 bytes while a column stays under 4 GB: half the size on disk and in cache."""
    return offsets.astype(np.uint32) if not len(offsets) or offsets[-1] < 2**32 else offsets


def write_table(directory: Path, rows: list[dict]) -> None:
    writer = TableWriter(directory)
    writer.append(rows)
    writer.close()


class _TextColumn:
    def __init__(self, directory: Path, name: str):
        self.offsets = np.load(directory / f"{name}.offsets.npy", mmap_mode="r")
        with (directory / f"{name}.bytes").open("rb") as f:  # a plain mmap: slicing it is ~10x numpy's
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> str:
        return self.data[int(self.offsets[row]):int(self.offsets[row + 1])].decode()

    def values(self, rows: np.ndarray) -> list[str]:
        starts, stops = self.offsets[rows].tolist(), self.offsets[rows + 1].tolist()
        return [self.data[a:b].decode() for a, b in zip(starts, stops)]

    def sort_order(self) -> np.ndarray:
        offsets = self.offsets.tolist()
        values = np.array([self.data[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
        return np.argsort(values, kind="stable").astype(np.int64) if len(values) else np.zeros(0, np.int64)


class ImageTable:
    """The read side: rows by id, a study's rows, and filter bitmaps."""

    def __init__(self, directory: Path):
        self.directory = directory
        info = json.loads((directory / TABLE_FILE).read_text())
        self.count = int(info["rows"])
        self.label_names: list[str] = info["labels"]
        self.projection_names: list[str] = info["projections"]
        self._columns = {name: _TextColumn(directory, name) for name in info["columns"]}
        self._label_codes = np.load(directory / "labels.codes.npy", mmap_mode="r")
        self._label_offsets = np.load(directory / "labels.offsets.npy", mmap_mode="r")
        self._projection_codes = np.load(directory / "projection.codes.npy", mmap_mode="r")
        self._orders = {column: _order(directory, column, name) for column, name in ORDER_FILES.items()}
        self._lazy_orders: dict[str, np.ndarray] = {}  # columns looked up only by some queries (patient_id)
        self._dates: np.ndarray | None = None  # each row's study date as an integer YYYYMMDD (0: none)
        if any(len(c) != self.count for c in self._columns.values()) or len(self._projection_codes) != self.count:
            raise ValueError(f"{directory}: columns of different lengths for {self.count} rows")
        self._bitmaps_built: dict[str, dict[str, np.ndarray]] | None = None
        self._amended: dict[int, dict] = {}  # row -> the fields its study's report replaces (cxr.reports)

    @property
    def _bitmaps(self) -> dict[str, dict[str, np.ndarray]]:
        """Each filter value's rows, built at the first filter or report (a commit only reads rows)."""
        if self._bitmaps_built is None:
            self._bitmaps_built = {"projection": self._projection_bitmaps(), "label": self._label_bitmaps()}
        return self._bitmaps_built

    @_bitmaps.setter
    def _bitmaps(self, value: dict[str, dict[str, np.ndarray]]) -> None:
        self._bitmaps_built = value

    def values(self, column: str, ids) -> list[str]:
        """One text column of these rows."""
        return self._columns[column].values(np.asarray(list(ids), np.int64))

    def rows(self, ids) -> list[dict]:
        ids = np.asarray(list(ids), np.int64)
        if not len(ids):
            return []
        columns = {name: column.values(ids) for name, column in self._columns.items()}
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        starts, stops = self._label_offsets[ids].tolist(), self._label_offsets[ids + 1].tolist()
        for row, code, start, stop in zip(rows, self._projection_codes[ids].tolist(), starts, stops):
            row["projection"] = self.projection_names[code] if code != NO_VALUE else ""
            row["labels"] = [self.label_names[c] for c in self._label_codes[start:stop].tolist()]
        for row, i in zip(rows, ids.tolist()):
            row.update(self._amended.get(i, ()))
        return rows

    def studies(self) -> Iterator[tuple[str, str, str, str]]:
        """(study_uid, study_instance_uid, accession_number, patient_id) of each study, in study order: once,
        or once per accession number where its images carry several (a merged study)."""
        names = ("study_uid", "study_instance_uid", "accession_number", "patient_id")
        columns = [self._columns[name] for name in names]
        study, seen = None, set()
        for row in np.asarray(self._orders["study_uid"]).tolist():
            identity = tuple(column[row] for column in columns)
            if identity[0] != study:
                study, seen = identity[0], set()
            if identity[2] not in seen:
                seen.add(identity[2])
                yield identity

    def amend(self, studies: dict[str, dict]) -> None:
        """Show `fields` (StudyReport.fields: report text, labels, ...) in every row of each study,
        with the label bitmaps following the new labels. Readers see the old or the new state, whole:
        what they read is replaced, never changed in place."""
        amended, changed = dict(self._amended), {}
        for study_uid, fields in studies.items():
            for row in self.matching("study_uid", study_uid):
                changed[row] = fields["labels"]
                amended[row] = fields
        if not changed:
            return
        self._bitmaps = dict(self._bitmaps, label=self._relabelled(changed))
        self._amended = amended

    def _relabelled(self, changed: dict[int, list[str]]) -> dict[str, np.ndarray]:
        maps = dict(self._bitmaps["label"])
        rows = np.fromiter(changed, np.int64, len(changed))
        for name in {label for labels in changed.values() for label in labels}:
            if name.lower() not in maps:
                maps[name.lower()] = np.zeros((self.count + 7) // 8, np.uint8)
                self.label_names = [*self.label_names, name]
        for key, bits in maps.items():
            bits = maps[key] = bits.copy()
            np.bitwise_and.at(bits, rows >> 3, ~(1 << (rows & 7)).astype(np.uint8))
            carrying = np.array([r for r, labels in changed.items() if key in {x.lower() for x in labels}], np.int64)
            np.bitwise_or.at(bits, carrying >> 3, (1 << (carrying & 7)).astype(np.uint8))
        return maps

    def study(self, study_uid: str) -> list[dict]:
        """Every image of one study, in id order."""
        return self.rows(self.matching("study_uid", study_uid))

    def image(self, image_id: str) -> dict | None:
        """One image's row; None when no image has this id."""
        found = self.matching("image_id", image_id)
        return self.rows(found[:1])[0] if found else None

    def matching(self, column: str, value: str) -> list[int]:
        """Ids of the rows whose `column` is `value`, by bisection over the column's sort order."""
        if column not in self._columns:  # a table written before the column existed: every row has ""
            return []
        values, order = self._columns[column], self._order(column)
        key = lambda position: values[int(order[position])]  # noqa: E731
        start = bisect.bisect_left(range(self.count), value, key=key)
        stop = bisect.bisect_right(range(self.count), value, lo=start, key=key)
        return sorted(int(i) for i in order[start:stop])

    def _order(self, column: str) -> np.ndarray:
        """A column's sort order: written with the build for study_uid and image_id, sorted at the first
        lookup for the others (patient_id: ~1 s for a million rows, once, and only when a query asks)."""
        if column in self._orders:
            return self._orders[column]
        if column not in self._lazy_orders:
            self._lazy_orders = {**self._lazy_orders, column: self._columns[column].sort_order()}
        return self._lazy_orders[column]

    def rows_bitmap(self, rows) -> np.ndarray:
        """These rows as a little-endian bitmap."""
        member = np.zeros(self.count, bool)
        member[np.asarray(list(rows), np.int64)] = True
        return np.packbits(member, bitorder="little")

    def date_bitmap(self, date_from: str = "", date_to: str = "") -> np.ndarray:
        """Rows whose study date is within [date_from, date_to] (YYYYMMDD, inclusive, "" no bound); a row
        without a readable date is left out."""
        if self._dates is None:
            self._dates = np.array([_day(text) for text in self._columns["study_date"].values(np.arange(self.count))],
                                   np.int32)
        dates = self._dates
        passes = dates > 0
        if date_from:
            passes &= dates >= int(date_from)
        if date_to:
            passes &= dates <= int(date_to)
        return np.packbits(passes, bitorder="little")

    def check(self, projections=(), labels=()) -> None:
        """Raise UnknownFilterError for a value no row carries, naming the known ones."""
        check_known(projections, labels, self.projection_names, self.label_names)

    def bitmap(self, projections=(), labels=(), known: bool = True) -> np.ndarray | None:
        """Rows passing the filters (any of the projections and any of the labels) as a little-endian
        bitmap; None: no filter. With `known`, a value no row carries is refused (UnknownFilterError);
        without, it lets no row through (images added since the build may carry it)."""
        if known:
            self.check(projections, labels)
        allowed, none = None, np.zeros((self.count + 7) // 8, np.uint8)
        for values, kind in ((projections, "projection"), (labels, "label")):
            if values:
                either = np.bitwise_or.reduce([self._bitmaps[kind].get(v.lower(), none) for v in values])
                allowed = either if allowed is None else allowed & either
        return allowed

    def _projection_bitmaps(self) -> dict[str, np.ndarray]:
        codes = np.asarray(self._projection_codes)
        return _merge_case({name: np.packbits(codes == code, bitorder="little")
                            for code, name in enumerate(self.projection_names)})

    def _label_bitmaps(self) -> dict[str, np.ndarray]:
        codes = np.asarray(self._label_codes)
        row_of_code = np.repeat(np.arange(self.count), np.diff(np.asarray(self._label_offsets)).astype(np.int64))
        maps = {}
        for code, name in enumerate(self.label_names):
            member = np.zeros(self.count, bool)
            member[row_of_code[codes == code]] = True
            maps[name] = np.packbits(member, bitorder="little")
        return _merge_case(maps)


def _merge_case(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Filters ignore case: 'effusion' selects rows labelled 'Effusion' or 'effusion'."""
    merged: dict[str, np.ndarray] = {}
    for name, bits in maps.items():
        key = name.lower()
        merged[key] = merged[key] | bits if key in merged else bits
    return merged


def check_known(projections, labels, projection_names: list[str], label_names: list[str]) -> None:
    """Filters ignore case; a value no image carries is refused with the values there are (shared by
    every vector store, so the message is the same whichever serves)."""
    for values, kind, names in ((projections, "projection", projection_names), (labels, "label", label_names)):
        known = {name.lower() for name in names}
        unknown = [v for v in values if v.lower() not in known]
        if unknown:
            # Positions, not values: a value typed into a filter may be anything, a patient's name included.
            places = [i + 1 for i, v in enumerate(values) if v.lower() not in known]
            where = ", ".join(map(str, places[:5])) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
            raise UnknownFilterError(f"{kind} filter value(s) at position {where} are not in this index; "
                                     f"it has {sorted(names)}")


def _day(text: str) -> int:
    """A DICOM DA (YYYYMMDD) as an integer; 0 for none or anything else."""
    return int(text) if len(text) == 8 and text.isdigit() else 0


def population(bitmap: np.ndarray | None, count: int) -> int:
    """How many rows a bitmap lets through (all of them for None)."""
    return count if bitmap is None else int(np.unpackbits(bitmap, bitorder="little", count=count).sum())
