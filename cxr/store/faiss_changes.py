"""The commits made to a FAISS index since it was written, as files beside it (cxr.store.faiss_files):

<dir>/changes/generation.json     the committed generation: which segments and deletions count, with the
                                  size and SHA-256 of each; replaced whole (written aside, synced, renamed)
<dir>/changes/seg-<g>.npy         the vectors a commit added (float32) ...
<dir>/changes/seg-<g>.jsonl       ... and their rows, one JSON object per line
<dir>/changes/del-<g>.json        the image ids a commit deleted or replaced

A commit writes its new files first, then the generation file: a crash at any point leaves the last
committed generation whole, and the files it wrote but did not commit are removed by the next commit.
Writers (a follower, `cxr index delete`, the gateway's DeleteStudy, compaction, a full build's swap) take
an exclusive lock on the folder's parent, so commits follow one another. Readers take none: they read the
generation file and then only files it lists, which nothing rewrites.

A generation names the build (`base`) it applies to; a compaction's new build carries the commits made
while it ran, and names the builds it was compacted from (`lineage`), so a gateway still serving one of
those goes on taking in commits until it has loaded the new build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr.files import sync_directory, write_durably
from cxr.store.errors import IndexCorruptError
from cxr.store.faiss_files import CHANGES_DIR

GENERATION_FILE = "generation.json"
FORMAT = 1


def base_id(manifest: dict) -> str:
    """What identifies a build: its own id, or for a build written before ids, its time and size."""
    return str(manifest.get("base_id") or f"{manifest.get('created')}/{manifest.get('count')}")


@contextlib.contextmanager
def writing(directory: Path) -> Iterator[None]:
    """The writers' lock of the index in `directory`: a lock on the folder that holds it (which a swap
    leaves in place), so writers of every model there take turns; commits take milliseconds."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Part:
    """One file of a commit: its generation, rows (added or deleted), name, size and SHA-256."""

    generation: int
    count: int
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Generation:
    base: str
    number: int = 0
    segments: tuple[tuple[Part, Part], ...] = ()  # (vectors, rows) per commit that added images
    deletions: tuple[Part, ...] = ()
    added: int = 0  # rows added since the build was written: what compaction would fold
    deleted: int = 0
    lineage: tuple[str, ...] = ()
    folded: int = 0  # the generation a compaction folded into `base`: what a store on a lineage build needs
    created: str = field(default="", compare=False)

    @property
    def pending(self) -> int:
        return self.added + self.deleted

    def applies_to(self, base: str, number: int) -> bool:
        """Whether a store of build `base` that took in commits up to `number` can take in this one's."""
        return base == self.base or (base in self.lineage and number >= self.folded)

    def after(self, number: int) -> Generation:
        """The commits after `number` only: what a compaction at `number` leaves to carry over."""
        segments = tuple(s for s in self.segments if s[0].generation > number)
        deletions = tuple(d for d in self.deletions if d.generation > number)
        return replace(self, segments=segments, deletions=deletions, added=sum(s[0].count for s in segments),
                       deleted=sum(d.count for d in deletions))

    def files(self) -> list[Part]:
        return [part for segment in self.segments for part in segment] + list(self.deletions)

    def to_json(self) -> str:
        body = asdict(self)
        body["format"] = FORMAT
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Generation:
        body = json.loads(text)
        if body.pop("format", None) != FORMAT:
            raise ValueError("unknown format")
        body["segments"] = tuple((Part(**v), Part(**r)) for v, r in body["segments"])
        body["deletions"] = tuple(Part(**d) for d in body["deletions"])
        body["lineage"] = tuple(body["lineage"])
        return cls(**body)


def read_generation(directory: Path) -> Generation | None:
    """The committed generation of the index in `directory`; None before the first commit."""
    path = directory / CHANGES_DIR / GENERATION_FILE
    try:
        return Generation.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise IndexCorruptError(f"{path} is not a readable generation ({type(exc).__name__}); remove the "
                                f"{CHANGES_DIR} folder to serve the build as written, or rebuild the index") from exc


def commit(directory: Path, generation: Generation) -> None:
    """Make `generation` the committed one (its files written already), then remove the files no
    generation lists: those of commits that crashed, and those a compaction folded. Under `writing`."""
    changes = directory / CHANGES_DIR
    stamped = replace(generation, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"))
    write_durably(changes / GENERATION_FILE, stamped.to_json().encode())
    listed = {part.name for part in generation.files()} | {GENERATION_FILE}
    for path in changes.iterdir():
        if path.name not in listed:
            path.unlink(missing_ok=True)


def write_part(directory: Path, generation: int, count: int, name: str, data: bytes) -> Part:
    changes = directory / CHANGES_DIR
    changes.mkdir(exist_ok=True)
    path = changes / name
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    sync_directory(changes)
    return Part(generation, count, name, len(data), hashlib.sha256(data).hexdigest())


def write_segment(directory: Path, generation: int, vectors: np.ndarray, rows: list[dict]) -> tuple[Part, Part]:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, np.float32))
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    return (write_part(directory, generation, len(rows), f"seg-{generation:09d}.npy", buffer.getvalue()),
            write_part(directory, generation, len(rows), f"seg-{generation:09d}.jsonl", lines))


def write_deletion(directory: Path, generation: int, image_ids: list[str]) -> Part:
    data = json.dumps({"image_ids": image_ids}, ensure_ascii=False).encode()
    return write_part(directory, generation, len(image_ids), f"del-{generation:09d}.json", data)


def read_part(directory: Path, part: Part) -> bytes:
    """A committed file's bytes, checked against its checksum (the bytes checked are the bytes used)."""
    path = directory / CHANGES_DIR / part.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexCorruptError(f"{path} is listed in {GENERATION_FILE} but cannot be read "
                                f"({exc.strerror or type(exc).__name__}); rebuild the index") from exc
    if len(data) != part.bytes or hashlib.sha256(data).hexdigest() != part.sha256:
        raise IndexCorruptError(f"{path} does not match the checksum {GENERATION_FILE} gives it: damaged or "
                                "swapped; rebuild the index")
    return data


def read_segment(directory: Path, segment: tuple[Part, Part]) -> tuple[np.ndarray, list[dict]]:
    vectors = np.load(io.BytesIO(read_part(directory, segment[0])), allow_pickle=False)
    rows = [json.loads(line) for line in read_part(directory, segment[1]).decode().splitlines()]
    if len(vectors) != len(rows) or len(rows) != segment[0].count:
        raise IndexCorruptError(f"{directory / CHANGES_DIR / segment[0].name}: {len(vectors)} vectors for "
                                f"{len(rows)} rows; rebuild the index")
    return vectors, rows


def read_deletion(directory: Path, deletion: Part) -> list[str]:
    return list(json.loads(read_part(directory, deletion))["image_ids"])
