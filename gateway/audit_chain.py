"""The audit log's chain and its files: how lines link, how files follow each other, how a set is verified.

Lines link by HMAC-SHA256 keyed with the log's key (`<audit_log>.key`, owner-only): each line's `prev`
is the keyed HMAC of the line before it, and the first line's is GENESIS. Without the key nobody can
recompute the links after editing, inserting or deleting a line (anybody could recompute the unkeyed
SHA-256 links of earlier versions).

The gateway writes `audit.log` and at `audit_max_bytes` renames it `audit.log.000001`, `.000002`, ...
The first line of every file carries `"file": N`, the number the file has (the live file: the number it
will have once rotated). File 1 starts at seq 0 with the genesis prev; file N+1's first line links to
file N's last. So a set verifies only whole: files numbered 1, 2, ... without a gap, each rotated file's
name carrying the number its first line says (a renamed file, or one from another log, is caught), each
file's first line the one it was written with (a file with its first lines cut has no number there).
A chain cannot show its own last lines cut off: docs/security.md ("The audit trail") says what to do about that.

Logs written before the chain was keyed (SHA-256 links, no file numbers) do not verify, and verify says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.audit_files import KEY_SUFFIX, key_file, rotated, rotation_number
from cxr.errors import FailedPreconditionError

GENESIS = "0" * 64
FILE_FIELD = "file"  # on the first line of each file: its number
_BLOCK = 1 << 16


class AuditError(FailedPreconditionError):
    """The audit log cannot be opened, continued, written or checked."""


def link(key: bytes, line: bytes) -> str:
    """The `prev` of the line after `line`: HMAC-SHA256 with the log's key."""
    return hmac.new(key, line, hashlib.sha256).hexdigest()


# --- files (named by cxr.audit_files) ----------------------------------------------------------

def log_files(paths: Iterable[Path]) -> list[Path]:
    """`paths` with the rotated files beside each live file among them, each once."""
    found: dict[Path, Path] = {}
    for path in paths:
        for member in [path] if rotation_number(path) is not None else [*rotated(path), path]:
            found.setdefault(member.resolve(), member)
    return list(found.values())


def load_key(path: Path) -> bytes:
    """The HMAC key of the log `path`, made (owner-only) on first use: the writer's side."""
    key_path = key_file(path)
    if not key_path.exists():
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(key_path.read_text().strip())


def read_key(key_path: Path) -> bytes:
    """An existing key, for verifying: never made here, since a new key would verify nothing."""
    try:
        return bytes.fromhex(key_path.read_text().strip())
    except FileNotFoundError as exc:
        raise AuditError(f"no audit key at {key_path}: the gateway keeps it beside the log as "
                         f"<audit_log>{KEY_SUFFIX}; give its path with --key FILE") from exc
    except (OSError, ValueError) as exc:
        raise AuditError(f"the audit key {key_path} cannot be read as the hex key the gateway writes: "
                         "give the log's own key with --key FILE") from exc


def first_line(path: Path) -> bytes | None:
    with path.open("rb") as f:
        return f.readline().rstrip(b"\n") or None


def last_line(path: Path) -> bytes | None:
    """The file's last line however long it is, read from the end; None when the file is empty."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - _BLOCK)
            f.seek(start)
            tail = f.read(end - start) + tail
            end = start
            body = tail.rstrip(b"\n")
            if b"\n" in body:
                return body.rsplit(b"\n", 1)[1]
    return tail.rstrip(b"\n") or None


# --- verification ------------------------------------------------------------------------------

@dataclass
class ChainFault:
    """Where a log's chain first breaks, and why (what `cxr audit verify` prints)."""

    file: Path
    line: int  # 1-based, within `file`
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class _Line:
    file: Path
    number: int
    raw: bytes
    seq: int = -1
    prev: str = ""


def verify(files: list[Path], key: bytes) -> tuple[ChainFault | None, int]:
    """(the first fault or None, the number of lines checked) over a whole log: every file, any order."""
    ordered, fault = _in_order(files)
    if fault is not None:
        return fault, 0
    return _check_chain(_read(ordered), key)


def verify_log(path: Path) -> tuple[ChainFault | None, int]:
    """verify() over the live file `path` with its rotated files, and the key beside it."""
    return verify(log_files([path]), read_key(key_file(path)))


def _in_order(files: list[Path]) -> tuple[list[Path], ChainFault | None]:
    """The files by the number their first lines give them, or the fault with the set."""
    heads = []
    for path in files:
        head = _head(path)
        if isinstance(head, ChainFault):
            return [], head
        if head is not None:
            heads.append((*head, path))
    heads.sort(key=lambda head: head[0])
    for i, (number, seq, path) in enumerate(heads):
        expected = heads[i - 1][0] + 1 if i else 1
        if number < expected:
            return [], ChainFault(path, 1, f"{heads[i - 1][2]} and this file both say they are file {number}: "
                                           "give the files of one log")
        if number > expected:
            missing = f"file {expected}" + (f" to {number - 1}" if number - 1 > expected else "")
            return [], ChainFault(path, 1, f"lines before seq {seq} are missing ({missing}): give every rotated file")
        if rotation_number(path) is None and i + 1 < len(heads):
            return [], ChainFault(path, 1, f"this live file is file {number}, yet {heads[i + 1][2]} follows it: "
                                           "give the files of one log")
    return [path for _, _, path in heads], None


def _head(path: Path) -> tuple[int, int] | ChainFault | None:
    """(file number, first seq) of a file; None for an empty live file (just rotated)."""
    with path.open("rb") as f:
        first, second = f.readline().rstrip(b"\n"), f.readline().rstrip(b"\n")
    if not first:
        named = rotation_number(path) is not None
        return ChainFault(path, 1, "empty, yet a rotated file always holds lines") if named else None
    try:
        item = json.loads(first)
        seq = int(item["seq"])
    except (ValueError, KeyError, TypeError):
        return ChainFault(path, 1, "not an audit line (damaged JSON or missing seq/prev)")
    number = item.get(FILE_FIELD)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        return _unnumbered(path, first, second, seq)
    named = rotation_number(path)
    if named is not None and named != number:
        return ChainFault(path, 1, f"its first line says file {number}, its name {named}: a renamed file, or one "
                                   "from another log")
    return number, seq


def _unnumbered(path: Path, first: bytes, second: bytes, seq: int) -> ChainFault:
    """A first line without a file number: an unkeyed log of an earlier version, or a file cut at its start."""
    try:
        legacy = json.loads(second)["prev"] == hashlib.sha256(first).hexdigest() if second else seq == 0
    except (ValueError, KeyError, TypeError):
        legacy = False
    if legacy:
        return ChainFault(path, 1, "written before audit chains were keyed (unkeyed SHA-256 links, no file "
                                   "numbers): this version cannot verify it; keep it as evidence")
    return ChainFault(path, 1, f"lines before seq {seq} are missing: this is not the first line the file was "
                               "written with; give every rotated file, whole")


def _read(files: list[Path]) -> Iterator[_Line]:
    for path in files:
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                yield _Line(path, number, raw.rstrip(b"\n"))


def _check_chain(lines: Iterator[_Line], key: bytes) -> tuple[ChainFault | None, int]:
    before, checked = None, 0
    for line in lines:
        try:
            item = json.loads(line.raw)
            line.seq, line.prev = int(item["seq"]), str(item["prev"])
        except (ValueError, KeyError, TypeError):
            return ChainFault(line.file, line.number, "not an audit line (damaged JSON or missing seq/prev)"), checked
        fault = _first_fault(line, key) if before is None else _link_fault(before, line, lines, key)
        if fault is not None:
            blames_before = before is not None and (fault.file, fault.line) == (before.file, before.number)
            return fault, checked - blames_before
        before, checked = line, checked + 1
    return None, checked


def _first_fault(line: _Line, key: bytes) -> ChainFault | None:
    if line.seq != 0:
        return ChainFault(line.file, line.number, f"lines before seq {line.seq} are missing: give every rotated file")
    if line.prev != GENESIS:
        return ChainFault(line.file, line.number, "this line was edited (the first line's prev is not the genesis "
                                                  "value)")
    return None


def _link_fault(before: _Line, line: _Line, lines: Iterator[_Line], key: bytes) -> ChainFault | None:
    expected = before.seq + 1
    if line.seq != expected:
        what = "deleted before it" if line.seq > expected else "inserted, or lines reordered"
        return ChainFault(line.file, line.number, f"seq {line.seq} where {expected} was due: a line was {what}")
    if line.prev == link(key, before.raw):
        return None
    if line.prev == hashlib.sha256(before.raw).hexdigest():
        return ChainFault(before.file, before.number, "this line was edited: the next line's prev is its "
                                                      "unkeyed SHA-256, so someone without the key re-chained the "
                                                      "lines after it")
    if line.number == 1:
        return ChainFault(line.file, 1, f"this file does not continue {before.file}: its first line's prev is not "
                                        "the link of that file's last line (a file from another log, or that line "
                                        "was edited)")
    after = next(lines, None)
    if after is not None and _prev_of(after) != link(key, line.raw):
        return ChainFault(line.file, line.number, "this line was edited")
    return ChainFault(before.file, before.number, "this line was edited (the next line's prev does not match it)")


def _prev_of(line: _Line) -> str | None:
    try:
        return str(json.loads(line.raw)["prev"])
    except (ValueError, KeyError, TypeError):
        return None
