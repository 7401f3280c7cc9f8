"""The audit log's writer: chained JSON lines appended to one file, rotated by size, floods summarised.

One gateway writes a file (an exclusive lock says so); each line's `prev` links it to the line before
(HMAC with `<audit_log>.key`) and at `max_bytes` the file is renamed `<audit_log>.000001`, ... with the
chain running on. How lines chain, how files follow each other and how `cxr audit verify` checks them:
gateway.audit_chain. What a line says: gateway.audit_records.

The key (owner-only) also lets an investigator check whether a given text or image was asked, which
the log alone does not reveal: a query's `hmac` is HMAC-SHA256 of its UTF-8 text or its image bytes.

Calls refused because their address keeps being refused (admission.RefusalLimiter: a flood) are
written at most one line per address per THROTTLED_PERIOD_S; a line's `suppressed` counts the calls
like it from that address since its previous line that got none (the gateway writes the last of them
within a period or so, `flush_throttled`): the flood is on record, and cannot fill the disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cxr.audit_files import rotated_name
from gateway.audit_chain import FILE_FIELD, GENESIS, AuditError, first_line, last_line, link, load_key, rotated

log = logging.getLogger("cxr.gateway.audit")

DEFAULT_MAX_BYTES = 64 * 2**20
THROTTLED_PERIOD_S = 1.0
THROTTLED_KEYS = 10_000  # addresses tracked; the least recently seen go first


def query_hmac(key: bytes, data: bytes) -> str:
    """What a line records of a query: HMAC-SHA256 with the log's key, never the text or image."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


class AuditLog:
    """Appends chained lines to `path`; one writer per file (an exclusive lock says so)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self._throttled: OrderedDict[str, _Throttled] = OrderedDict()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.key = load_key(path)
            self.seq, self.prev, self.file_number = self._chain_state()
            self._open()
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {path}: {exc}; fix its folder's permissions or set "
                             "audit_log to a writable path") from exc

    def _chain_state(self) -> tuple[int, str, int]:
        """The next line's seq, prev and file number, from the newest file written before (this one or the
        last rotated)."""
        for candidate in [self.path, *reversed(rotated(self.path))]:
            last = last_line(candidate) if candidate.is_file() else None
            if last is None:
                continue
            try:
                seq = json.loads(last)["seq"] + 1
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"the audit log {candidate} ends with a damaged line; keep the file as evidence, "
                                 "move it aside and start the gateway again") from exc
            number = _file_number(candidate)
            return seq, link(self.key, last), number if candidate == self.path else number + 1
        return 0, GENESIS, 1

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise AuditError(f"another process writes the audit log {self.path}: give each gateway its own "
                             "audit_log") from exc
        self._size = os.fstat(self._fd).st_size

    def hmac(self, data: bytes) -> str:
        return query_hmac(self.key, data)

    def append(self, record: dict) -> int:
        """Write one line (seq, prev, and on a file's first line its number, added); returns its seq.
        Raises OSError when it cannot."""
        head = {"seq": self.seq, FILE_FIELD: self.file_number} if self._size == 0 else {"seq": self.seq}
        line = json.dumps({**head, **record, "prev": self.prev}, separators=(",", ":")).encode()
        os.write(self._fd, line + b"\n")  # one write on an O_APPEND file: the line lands whole
        seq, self.seq, self.prev = self.seq, self.seq + 1, link(self.key, line)
        self._size += len(line) + 1
        if self._size >= self.max_bytes:
            self._rotate()
        return seq

    def append_throttled(self, key: str, record: dict, now: float | None = None) -> int | None:
        """`append` at most once per THROTTLED_PERIOD_S for `key`; a record left out is kept (the last one) and
        counted. Returns the seq written, or None when the record was left out."""
        now = time.monotonic() if now is None else now
        entry = self._throttled.pop(key, None) or _Throttled()
        self._throttled[key] = entry
        if len(self._throttled) > THROTTLED_KEYS:
            self._flush(*self._throttled.popitem(last=False))
        if now - entry.written < THROTTLED_PERIOD_S:
            entry.left_out, entry.last = entry.left_out + 1, record
            return None
        return self._flush(key, entry, record, now)

    def flush_throttled(self, now: float | None = None) -> None:
        """Write the last record left out of each key whose period has passed (the gateway calls this every
        second, and on stopping with `now` = inf), so a flood that stops is on record whole."""
        now = time.monotonic() if now is None else now
        try:
            for key, entry in list(self._throttled.items()):
                if entry.left_out and now - entry.written >= THROTTLED_PERIOD_S:
                    self._flush(key, entry, None, now)
        except OSError as exc:  # the calls were refused already: nothing waits on these lines
            log.error("audit log %s: summary of refused calls not written (%s)", self.path, exc)

    def _flush(self, key: str, entry: _Throttled, record: dict | None = None, now: float = 0.0) -> int | None:
        """Write `record` (or the last one left out) with the count of those left out before it."""
        if record is None:
            record, entry.left_out = entry.last, entry.left_out - 1
        if record is None:
            return None
        seq = self.append(dict(record, suppressed=entry.left_out) if entry.left_out else record)
        entry.written, entry.left_out, entry.last = now, 0, None
        return seq

    def _rotate(self) -> None:
        # The number comes from the file's own first line, not from the rotated files still beside it:
        # an operator who archives those elsewhere must not make the next file reuse a number.
        target = rotated_name(self.path, self.file_number)
        if target.exists():
            raise FileExistsError(f"{target} exists: the audit log cannot rotate onto it")
        self.path.rename(target)
        os.close(self._fd)
        self.file_number += 1
        self._open()

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class _Throttled:
    written: float = float("-inf")  # when the key's last line was written
    left_out: int = 0  # records left out since
    last: dict | None = None  # the last of them


def _file_number(path: Path) -> int:
    """The number the first line of `path` gives the file; a log without one cannot be continued."""
    try:
        number = json.loads(first_line(path) or b"")[FILE_FIELD]
        if isinstance(number, int) and not isinstance(number, bool):
            return number
    except (ValueError, KeyError, TypeError):
        pass
    raise AuditError(f"the audit log {path} has no file number in its first line: an earlier version wrote it "
                     "(an unkeyed chain), or lines were cut from its start. Keep it and its rotated files as "
                     "evidence, move them aside (or set audit_log to a new path) and start the gateway again")
