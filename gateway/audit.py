"""The audit trail: one JSON line per Retrieval RPC, bounded in size, chained with the log's key.

A line says who (principal, client certificate subject, peer: the HTTP client's for calls through
the HTTP API), what (method, model, top_k, filters, the kind of query and an HMAC of it, never the
text or the image itself), when, the status, the latency and which studies were returned. When the
log cannot be written, the call fails with UNAVAILABLE instead of going unrecorded. How lines chain
(HMAC with `<audit_log>.key`), how files rotate and how `cxr audit verify` checks them: gateway.audit_chain.

The key (owner-only) also lets an investigator check whether a given text or image was asked, which
the log alone does not reveal: a query's `hmac` is HMAC-SHA256 of its UTF-8 text or its image bytes.

What a line copies from the request is bounded whatever the request holds: a client-sent string is
written only when it is short and from a known vocabulary, else as `<field>_hmac` (HMAC of its UTF-8)
and `<field>_chars` (its length). "Short" counts bytes as the line writes them, JSON escapes included.
- `model`: when empty (the active model) or a registered model name (cxr.registry);
- filter values: only when the call was answered (the service refuses values the index does not hold,
  so they are then the index's vocabulary): the distinct ones of at most VERBATIM_MAX_BYTES, at most
  FILTER_VALUES_LISTED per kind, with `<kind>_count` (the number sent) when any were left out. A call
  not answered records `<kind>_hmac` (HMAC of the JSON array as sent, `separators=(",", ":")`) and
  `<kind>_count` instead: a label typed by a user (a patient's name) is not written;
- GetStudy's `study_uid`: at most VERBATIM_MAX_BYTES characters of [0-9A-Za-z._-] (a DICOM UID is at
  most 64 digits and dots);
- `principal`, `client_cert` and `peer` are vouched for (identity provider, certificate authority,
  the socket), but a careless issuer is no reason for an unbounded line: at most IDENTITY_MAX_BYTES;
- a BatchSearch: its first MAX_BATCH_QUERIES queries (as many as a valid batch holds) and `query_count`.
Calls refused because their address keeps being refused (admission.RefusalLimiter: a flood) are
written at most one line per address per THROTTLED_PERIOD_S; a line's `suppressed` counts the calls
like it from that address since its previous line that got none (the gateway writes the last of them
within a period or so, `flush_throttled`): the flood is on record, and cannot fill the disk.
The largest line a call not answered can write (whatever it sent, within the 64 MB message limit) is
under MAX_REFUSED_LINE_BYTES (128 KiB); an answered call's is under MAX_LINE_BYTES (640 KiB) plus its
`study_uids`, the studies its answer named (at most MAX_BATCH_QUERIES x MAX_TOP_K, as long as the index
holds them): that list is what the line is for, and only a caller allowed to search gets it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc

from cxr import registry
from gateway import calls
from gateway.audit_chain import (FILE_FIELD, GENESIS, AuditError, first_line, last_line, link, load_key,
                                 rotated)
from gateway.admission import MAX_BATCH_QUERIES, THROTTLED

log = logging.getLogger("cxr.gateway.audit")

DEFAULT_MAX_BYTES = 64 * 2**20
THROTTLED_PERIOD_S = 1.0
THROTTLED_KEYS = 10_000  # addresses tracked; the least recently seen go first
VERBATIM_MAX_BYTES = 64  # as written in the line, JSON escapes included
IDENTITY_MAX_BYTES = 256
FILTER_VALUES_LISTED = 16
# The largest lines, less the study UIDs of an answer (tests/gateway/test_audit.py builds the worst):
MAX_LINE_BYTES = 640 * 1024  # an answered BatchSearch of 256 queries, each with 2 x 16 filter values listed
MAX_REFUSED_LINE_BYTES = 128 * 1024  # a call not answered: 256 queries of HMACs and counts
_IDENTIFIER = re.compile(r"[0-9A-Za-z._-]*")


def query_hmac(key: bytes, data: bytes) -> str:
    """What a line records of a query: HMAC-SHA256 with the log's key, never the text or image."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        target = self.path.with_name(f"{self.path.name}.{self.file_number:06d}")
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


# --- what a line says about a call -----------------------------------------------------------

def _opaque(name: str, value: str, audit: AuditLog) -> dict:
    """A client-sent string the line does not show: its HMAC and its length."""
    return {f"{name}_hmac": audit.hmac(value.encode("utf-8", "surrogatepass")), f"{name}_chars": len(value)}


def _shown_if(known: bool, name: str, value: str, audit: AuditLog) -> dict:
    return {name: value} if known else _opaque(name, value, audit)


def _fits(value: str, limit: int) -> bool:
    """Whether `value` takes at most `limit` bytes as the line writes it (JSON escapes included)."""
    return len(value) <= limit and len(json.dumps(value)) - 2 <= limit


def _model(name: str, audit: AuditLog) -> dict:
    return _shown_if(name == "" or name in registry.list_models(), "model", name, audit)


def _study_uid(uid: str, audit: AuditLog) -> dict:
    known = len(uid) <= VERBATIM_MAX_BYTES and _IDENTIFIER.fullmatch(uid) is not None
    return _shown_if(known, "study_uid", uid, audit)


def _identity(name: str, value: str, audit: AuditLog) -> dict:
    return _shown_if(_fits(value, IDENTITY_MAX_BYTES), name, value, audit)


def _filter_values(kind: str, values, answered: bool, audit: AuditLog) -> dict:
    if not answered:
        sent = json.dumps(list(values), separators=(",", ":")).encode()
        return {f"{kind}_hmac": audit.hmac(sent), f"{kind}_count": len(values)}
    listed = list(dict.fromkeys(v for v in values if _fits(v, VERBATIM_MAX_BYTES)))[:FILTER_VALUES_LISTED]
    return {kind: listed, f"{kind}_count": len(values)} if len(listed) < len(values) else {kind: listed}


def _filters(filters, answered: bool, audit: AuditLog) -> dict:
    described = {}
    for kind, values in (("projections", filters.projections), ("labels", filters.labels)):
        if values:
            described.update(_filter_values(kind, values, answered, audit))
    return described


def _query(request, kind: str, data: bytes, answered: bool, audit: AuditLog) -> dict:
    entry = {"kind": kind, **_model(request.model, audit), "top_k": request.top_k, "hmac": audit.hmac(data)}
    filters = _filters(request.filters, answered, audit)
    return dict(entry, filters=filters) if filters else entry


def _batch_query(query, answered: bool, audit: AuditLog) -> dict:
    if query.WhichOneof("query") == "text":
        return _query(query.text, "text", query.text.text.encode(), answered, audit)
    return _query(query.image, "image", bytes(query.image.image), answered, audit)


def describe_request(method: str, request, audit: AuditLog, answered: bool = False) -> dict:
    """The queries of a call, without their text or image; `answered`: the call ended OK."""
    if request is calls.MALFORMED:
        return {"queries": [], "malformed": True}
    name = calls.method_name(method)
    if name == "SearchByText":
        return {"queries": [_query(request, "text", request.text.encode(), answered, audit)]}
    if name == "SearchByImage":
        return {"queries": [_query(request, "image", bytes(request.image), answered, audit)]}
    if name == "BatchSearch":
        queries = request.queries
        return {"queries": [_batch_query(q, answered, audit) for q in queries[:MAX_BATCH_QUERIES]],
                "query_count": len(queries)}
    if name == "GetStudy":
        return {"queries": [{"kind": "study", **_model(request.model, audit), **_study_uid(request.study_uid, audit)}]}
    return {}


def describe_response(method: str, response, call: calls.Call | None = None) -> dict:
    """How many hits and which studies the call returned: as the index names them (the service notes them
    in the call before it answers a caller who may not see patient data with opaque ids)."""
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
    uids = call.study_uids if call is not None else [hit.study_uid for result in results for hit in result.hits]
    return {"models": sorted({r.model for r in results}), "hits": sum(len(r.hits) for r in results),
            "study_uids": list(dict.fromkeys(uids))}


def describe_caller(call: calls.Call | None, context, audit: AuditLog) -> dict:
    """Who called, each field bounded."""
    return {**_identity("principal", call.principal if call else "", audit),
            **_identity("client_cert", calls.client_subject(context), audit),
            **_identity("peer", calls.client_peer(context), audit)}


def describe_call(call: calls.Call | None, context, request, status: grpc.StatusCode, response,
                  audit: AuditLog) -> dict:
    """The line of a call (less seq, file and prev, which AuditLog.append adds)."""
    method = call.method if call else ""
    return {"time": _utc_now(), "request_id": call.request_id if call else "",
            **describe_caller(call, context, audit), "method": calls.method_name(method),
            **describe_request(method, request, audit, answered=status == grpc.StatusCode.OK),
            "status": status.name,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 2) if call else None,
            **describe_response(method, response, call)}


def describe_http_refusal(request_id: str, principal: str, client_cert: str, peer: str, method: str,
                          status: grpc.StatusCode, http_status: int, started: float, audit: AuditLog) -> dict:
    """The line of a call the HTTP side refused before any gRPC call (gateway.http_admission): nothing of
    its body was read, so nothing of it is described."""
    return {"time": _utc_now(), "request_id": request_id, **_identity("principal", principal, audit),
            **_identity("client_cert", client_cert, audit), **_identity("peer", peer, audit),
            "method": method or "HTTP", "queries": [], "status": status.name, "http_status": http_status,
            "latency_ms": round((time.monotonic() - started) * 1000, 2), "hits": 0, "study_uids": []}


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
        line = describe_call(call, context, request, status, response, self.audit)
        try:
            if call is not None and call.rejected == THROTTLED:
                self.audit.append_throttled(calls.client_address(context), line)
            else:
                self.audit.append(line)
            return True
        except OSError as exc:
            log.error("audit log %s not written (%s): request %s %s", self.audit.path, exc,
                      line["request_id"], "already failed" if failed_call else "refused (UNAVAILABLE)")
            return False
