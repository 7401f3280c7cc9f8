"""The audit trail: one JSON line per Retrieval RPC, each carrying the SHA-256 of the line before it.

A line says who (principal, client certificate subject, peer: the HTTP client's for calls through
the HTTP API), what (method, model, top_k, filters, the kind of query and an HMAC of it, never the
text or the image itself), when, the status, the latency and which studies were returned. Editing,
inserting or deleting a line breaks the chain at that line; `cxr audit verify FILE…` names it. Files rotate by size and the chain runs
on across them (`seq` numbers every line since the first). When the log cannot be written, the
call fails with UNAVAILABLE instead of going unrecorded.

The HMAC key lives beside the log (`<audit_log>.key`, owner-only): with it an investigator can
check whether a given text or image was asked, which the log alone does not reveal.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from cxr.errors import CxrError
from gateway import calls

log = logging.getLogger("cxr.gateway.audit")

GENESIS = "0" * 64
DEFAULT_MAX_BYTES = 64 * 2**20
KEY_SUFFIX = ".key"


class AuditError(CxrError):
    """The audit log cannot be opened, continued or written."""


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def query_hmac(key: bytes, data: bytes) -> str:
    """What a line records of a query: HMAC-SHA256 with the log's key, never the text or image."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rotated(path: Path) -> list[Path]:
    """Rotated files of `path`, oldest first (`audit.log.000001`, `audit.log.000002`, ...)."""
    return sorted(p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit())


def _last_line(path: Path) -> bytes | None:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        if end == 0:
            return None
        block = min(end, 1 << 16)
        f.seek(end - block)
        lines = f.read(block).rstrip(b"\n").rsplit(b"\n", 1)
    return lines[-1]


def load_key(path: Path) -> bytes:
    """The HMAC key beside the log, made (owner-only) on first use."""
    key_file = path.with_name(path.name + KEY_SUFFIX)
    if not key_file.exists():
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(key_file.read_text().strip())


class AuditLog:
    """Appends chained lines to `path`; one writer per file (an exclusive lock says so)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.key = load_key(path)
            self.seq, self.prev = self._chain_state()
            self._open()
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {path}: {exc}; fix its folder's permissions or set "
                             "audit_log to a writable path") from exc

    def _chain_state(self) -> tuple[int, str]:
        """The next line's seq and prev, from the newest line written before (this file or the last rotated)."""
        for candidate in [self.path, *reversed(_rotated(self.path))]:
            last = _last_line(candidate) if candidate.is_file() else None
            if last is None:
                continue
            try:
                return json.loads(last)["seq"] + 1, line_hash(last)
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"the audit log {candidate} ends with a damaged line; keep the file as evidence, "
                                 "move it aside and start the gateway again") from exc
        return 0, GENESIS

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
        """Write one line (seq and prev added); returns its seq. Raises OSError when it cannot."""
        line = json.dumps(dict(seq=self.seq, **record, prev=self.prev), separators=(",", ":")).encode()
        os.write(self._fd, line + b"\n")  # one write on an O_APPEND file: the line lands whole
        seq, self.seq, self.prev = self.seq, self.seq + 1, line_hash(line)
        self._size += len(line) + 1
        if self._size >= self.max_bytes:
            self._rotate()
        return seq

    def _rotate(self) -> None:
        number = int(_rotated(self.path)[-1].suffix[1:]) + 1 if _rotated(self.path) else 1
        self.path.rename(self.path.with_name(f"{self.path.name}.{number:06d}"))
        os.close(self._fd)
        self._open()

    def close(self) -> None:
        os.close(self._fd)


# --- what a line says about a call -----------------------------------------------------------

def _filters(filters) -> dict:
    return {key: list(values) for key, values in
            (("projections", filters.projections), ("labels", filters.labels)) if values}


def _query(request, kind: str, data: bytes, audit: AuditLog) -> dict:
    entry = {"kind": kind, "model": request.model, "top_k": request.top_k, "hmac": audit.hmac(data)}
    filters = _filters(request.filters)
    return dict(entry, filters=filters) if filters else entry


def describe_request(method: str, request, audit: AuditLog) -> dict:
    """The queries of a call, without their text or image."""
    if request is calls.MALFORMED:
        return {"queries": [], "malformed": True}
    name = calls.method_name(method)
    if name == "SearchByText":
        return {"queries": [_query(request, "text", request.text.encode(), audit)]}
    if name == "SearchByImage":
        return {"queries": [_query(request, "image", bytes(request.image), audit)]}
    if name == "BatchSearch":
        return {"queries": [_query(q.text, "text", q.text.text.encode(), audit) if q.WhichOneof("query") == "text"
                            else _query(q.image, "image", bytes(q.image.image), audit) for q in request.queries]}
    if name == "GetStudy":
        return {"queries": [{"kind": "study", "model": request.model, "study_uid": request.study_uid}]}
    return {}


def describe_response(method: str, response) -> dict:
    """How many hits and which studies the call returned."""
    name = calls.method_name(method)
    if response is None:
        return {"hits": 0, "study_uids": []}
    if name in ("SearchByText", "SearchByImage"):
        results = [response]
    elif name == "BatchSearch":
        results = list(response.results)
    elif name == "GetStudy":
        return {"hits": 1, "study_uids": [response.study_uid]}
    else:
        return {"hits": 0, "study_uids": []}
    uids = [hit.study_uid for result in results for hit in result.hits]
    return {"models": sorted({r.model for r in results}), "hits": len(uids), "study_uids": list(dict.fromkeys(uids))}


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Writes the line after the handler and before the answer leaves: no line, no answer."""

    def __init__(self, audit: AuditLog):
        self.audit = audit

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.startswith(calls.RETRIEVAL_PREFIX):
            return handler
        return calls.wrap_unary(handler, self._audited)

    async def _audited(self, run, request, context):
        try:
            response = await run()
        except BaseException:
            self._write(request, context, context.code() or grpc.StatusCode.CANCELLED, failed_call=True)
            raise
        if not self._write(request, context, grpc.StatusCode.OK, response):
            await calls.abort(context, grpc.StatusCode.UNAVAILABLE,
                              "the audit log cannot be written, so the gateway does not answer: an operator must "
                              "fix it (see the gateway log)", "audit")
        return response

    def _write(self, request, context, status: grpc.StatusCode, response=None, failed_call: bool = False) -> bool:
        call = calls.current()
        method = call.method if call else ""
        record = {"time": _utc_now(), "request_id": call.request_id if call else "",
                  "principal": call.principal if call else "", "client_cert": calls.client_subject(context),
                  "peer": calls.client_peer(context), "method": calls.method_name(method),
                  **describe_request(method, request, self.audit),
                  "status": status.name,
                  "latency_ms": round((time.monotonic() - call.started) * 1000, 2) if call else None,
                  **describe_response(method, response)}
        try:
            self.audit.append(record)
            return True
        except OSError as exc:
            log.error("audit log %s not written (%s): request %s %s", self.audit.path, exc,
                      record["request_id"], "already failed" if failed_call else "refused (UNAVAILABLE)")
            return False


# --- verification ------------------------------------------------------------------------------

@dataclass
class Problem:
    file: Path
    line: int  # 1-based, within `file`
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def _lines(files: list[Path]) -> list[tuple[Path, int, bytes]]:
    def first_seq(path: Path) -> int:
        with path.open("rb") as f:
            try:
                return json.loads(f.readline())["seq"]
            except (ValueError, KeyError, TypeError):
                return -1
    ordered = sorted(files, key=first_seq)
    return [(path, number, line) for path in ordered
            for number, line in enumerate(path.read_bytes().splitlines(), 1)]


def verify(files: list[Path]) -> tuple[Problem | None, int]:
    """(the first bad line or None, the number of lines checked), over files in chain order."""
    lines = _lines(files)
    parsed = []
    for path, number, line in lines:
        try:
            item = json.loads(line)
            parsed.append((int(item["seq"]), str(item["prev"])))
        except (ValueError, KeyError, TypeError):
            return Problem(path, number, "not an audit line (damaged JSON or missing seq/prev)"), len(parsed)
    for i, ((path, number, _), (seq, prev)) in enumerate(zip(lines, parsed)):
        if i == 0:
            if seq == 0 and prev != GENESIS:
                return Problem(path, number, "the first line's prev is not the genesis value"), i
            continue
        expected_seq = parsed[i - 1][0] + 1
        if seq != expected_seq:
            what = "deleted before it" if seq > expected_seq else "inserted, or lines reordered"
            return Problem(path, number, f"seq {seq} where {expected_seq} was due: a line was {what}"), i
        if prev != line_hash(lines[i - 1][2]):
            return _edited(lines, parsed, i), i
    return None, len(lines)


def _edited(lines, parsed, i: int) -> Problem:
    """Line i's prev does not match line i-1. If line i+1 does not match line i either, line i itself
    was changed (its prev among its fields); otherwise line i-1 was."""
    path, number, line = lines[i]
    if i + 1 < len(lines) and parsed[i + 1][1] != line_hash(line):
        return Problem(path, number, "this line was edited")
    before_path, before_number, _ = lines[i - 1]
    return Problem(before_path, before_number, "this line was edited (the next line's prev does not match it)")
