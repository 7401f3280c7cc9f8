"""What an audit line says about a call, each field bounded whatever the request holds.

A line says who (principal, client certificate subject, peer: the HTTP client's for calls through
the HTTP API), what (method, model, top_k, filters, the kind of query and an HMAC of it, never the
text or the image itself), when, the status, the latency and which studies were returned; for an
administrator's deletion, the study uid or image id named, and once answered the study deleted (DeleteStudy),
how many images went (`deleted`) and the commit's `generation`. The log that writes it: gateway.audit_log.

What a line copies from the request is bounded whatever the request holds: a client-sent string is
written only when it is short and from a known vocabulary, else as `<field>_hmac` (HMAC of its UTF-8)
and `<field>_chars` (its length). "Short" counts bytes as the line writes them, JSON escapes included.
- `model`: when empty (the active model) or a registered model name (cxr.registry);
- filter values: only when the call was answered (the service refuses values the index does not hold,
  so they are then the index's vocabulary): the distinct ones of at most VERBATIM_MAX_BYTES, at most
  FILTER_VALUES_LISTED per kind, with `<kind>_count` (the number sent) when any were left out. A call
  not answered records `<kind>_hmac` (HMAC of the JSON array as sent, `separators=(",", ":")`) and
  `<kind>_count` instead: a label typed by a user (a patient's name) is not written;
- GetStudy's and DeleteStudy's `study_uid`, DeleteImage's `image_id`: at most VERBATIM_MAX_BYTES characters
  of [0-9A-Za-z._-] (a DICOM UID is at most 64 digits and dots);
- `principal`, `client_cert` and `peer` are vouched for (identity provider, certificate authority,
  the socket), but a careless issuer is no reason for an unbounded line: at most IDENTITY_MAX_BYTES;
- a search by an archived image: kind `archived_image`, the HMAC of its image_id; a refined search names which
  refinements it used (`refined`: feedback, with_text, exclude_text, roi), never their content;
- a BatchSearch: its first MAX_BATCH_QUERIES queries (as many as a valid batch holds) and `query_count`.
The largest line a call not answered can write (whatever it sent, within the 64 MB message limit) is
under MAX_REFUSED_LINE_BYTES (128 KiB); an answered call's is under MAX_LINE_BYTES (640 KiB) plus its
`study_uids`, the studies its answer named (at most MAX_BATCH_QUERIES x MAX_TOP_K, as long as the index
holds them): that list is what the line is for, and only a caller allowed to search gets it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import grpc

from cxr import registry
from gateway import calls
from gateway.admission import MAX_BATCH_QUERIES
from gateway.audit_log import AuditLog

VERBATIM_MAX_BYTES = 64  # as written in the line, JSON escapes included
IDENTITY_MAX_BYTES = 256
FILTER_VALUES_LISTED = 16
# The largest lines, less the study UIDs of an answer (tests/unit/gateway/test_audit_records.py builds the worst):
MAX_LINE_BYTES = 640 * 1024  # an answered BatchSearch of 256 queries, each with 2 x 16 filter values listed
MAX_REFUSED_LINE_BYTES = 128 * 1024  # a call not answered: 256 queries of HMACs and counts
_IDENTIFIER = re.compile(r"[0-9A-Za-z._-]*")
DELETIONS = ("DeleteStudy", "DeleteImage")
REFINEMENTS = ("feedback", "with_text", "exclude_text", "roi")  # a search's refinements, named in its line when set


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def _identifier(name: str, value: str, audit: AuditLog) -> dict:
    """A study uid or image id: written when short and of an identifier's characters."""
    known = len(value) <= VERBATIM_MAX_BYTES and _IDENTIFIER.fullmatch(value) is not None
    return _shown_if(known, name, value, audit)


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
    refined = [name for name in REFINEMENTS if name in request.DESCRIPTOR.fields_by_name and _set(request, name)]
    if refined:
        entry["refined"] = refined  # which, never the words, region or images sent
    return dict(entry, filters=filters) if filters else entry


def _set(request, name: str) -> bool:
    if request.DESCRIPTOR.fields_by_name[name].message_type is not None:
        return request.HasField(name)
    return bool(getattr(request, name))


def _image_query(request, answered: bool, audit: AuditLog) -> dict:
    """An upload, or an archived image named by image_id (kept as its HMAC: ids carry patient numbers)."""
    if request.image_id and not request.image:
        return _query(request, "archived_image", request.image_id.encode("utf-8", "surrogatepass"), answered, audit)
    return _query(request, "image", bytes(request.image), answered, audit)


def _batch_query(query, answered: bool, audit: AuditLog) -> dict:
    if query.WhichOneof("query") == "text":
        return _query(query.text, "text", query.text.text.encode(), answered, audit)
    return _image_query(query.image, answered, audit)


def describe_request(method: str, request, audit: AuditLog, answered: bool = False) -> dict:
    """The queries of a call, without their text or image; `answered`: the call ended OK."""
    if request is calls.MALFORMED:
        return {"queries": [], "malformed": True}
    name = calls.method_name(method)
    if name == "SearchByText":
        return {"queries": [_query(request, "text", request.text.encode(), answered, audit)]}
    if name == "SearchByImage":
        return {"queries": [_image_query(request, answered, audit)]}
    if name == "BatchSearch":
        queries = request.queries
        return {"queries": [_batch_query(q, answered, audit) for q in queries[:MAX_BATCH_QUERIES]],
                "query_count": len(queries)}
    if name == "GetStudy":
        return {"queries": [{"kind": "study", **_model(request.model, audit),
                             **_identifier("study_uid", request.study_uid, audit)}]}
    if name == "DeleteStudy":
        return {"queries": [{"kind": "delete_study", **_model(request.model, audit),
                             **_identifier("study_uid", request.study_uid, audit)}]}
    if name == "DeleteImage":
        return {"queries": [{"kind": "delete_image", **_model(request.model, audit),
                             **_identifier("image_id", request.image_id, audit)}]}
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
    elif name in DELETIONS:
        return {"hits": 0, "study_uids": list(call.study_uids) if call is not None else [],
                "deleted": response.deleted, "generation": response.generation}
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
