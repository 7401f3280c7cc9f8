"""HTTP answers for errors: gRPC status codes as google.rpc maps them to HTTP, in one JSON shape.

Every error body reads {"error": {"code": <HTTP status>, "status": "INVALID_ARGUMENT", "message":
..., "requestId": ..., "details": [...]}}; the request id (when the call reached the gRPC service) is also
the X-Request-Id header, and is what the gateway log and the audit trail know the call by. "details" are
the google.rpc details of the gRPC error (gateway/error_details.py) in the proto3 JSON mapping, each with its
"@type": an ErrorInfo always (its reason: the refusal's label for refusals made on the HTTP side), RetryInfo
beside Retry-After, BadRequest, RequestInfo.
"""

from __future__ import annotations

import math
from http import HTTPStatus

import grpc
from google.protobuf import json_format
from starlette.responses import JSONResponse

from cxr.metadata_keys import REQUEST_ID_KEY
from gateway import error_details

Code = grpc.StatusCode
# https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto: each code's HTTP mapping.
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400, Code.FAILED_PRECONDITION: 400, Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401, Code.PERMISSION_DENIED: 403, Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409, Code.ABORTED: 409, Code.RESOURCE_EXHAUSTED: 429, Code.CANCELLED: 499,
    Code.UNIMPLEMENTED: 501, Code.UNAVAILABLE: 503, Code.DEADLINE_EXCEEDED: 504,
}
API_HEADERS = {"Cache-Control": "no-store"}  # answers carry patient data: no cache keeps them
# The gRPC code the audit trail and the metrics record for a refusal made on the HTTP side itself.
GRPC_OF_HTTP = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED,
                404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED, 408: Code.DEADLINE_EXCEEDED, 413: Code.RESOURCE_EXHAUSTED,
                415: Code.INVALID_ARGUMENT, 421: Code.PERMISSION_DENIED, 429: Code.RESOURCE_EXHAUSTED,
                431: Code.INVALID_ARGUMENT, 503: Code.UNAVAILABLE}


class Problem(Exception):
    """A request the HTTP side refuses before any gRPC call: bad JSON, a body too large, ..."""

    def __init__(self, http: int, message: str, status: str = "", headers: dict | None = None, reason: str = ""):
        super().__init__(message)
        self.http = http
        self.status = status or ("INVALID_ARGUMENT" if http == 400 else HTTPStatus(http).name)
        self.headers = headers or {}
        self.reason = reason  # the metrics' refusal reason, when the status alone does not say it
        self.request_id = ""  # set once the refusal is recorded

    @property
    def code(self) -> grpc.StatusCode:
        return GRPC_OF_HTTP.get(self.http, Code.INTERNAL)


def error_response(http: int, status: str, message: str, request_id: str = "",
                   headers: dict | None = None, details: list[dict] | None = None) -> JSONResponse:
    error = {"code": http, "status": status, "message": message}
    extra = dict(API_HEADERS, **(headers or {}))
    if request_id:
        error["requestId"] = request_id
        extra["X-Request-Id"] = request_id
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=http, headers=extra)


def _json(found) -> list[dict]:
    return [json_format.MessageToDict(packed) for packed in found.details]


def problem_response(problem: Problem) -> JSONResponse:
    retry = problem.headers.get("Retry-After", "")
    found = error_details.status(problem.code, str(problem), (problem.reason or problem.status).upper(),
                                 problem.request_id, float(retry) if retry.isdigit() else None)
    return error_response(problem.http, problem.status, str(problem), problem.request_id, problem.headers,
                          _json(found))


def trailer(metadata, key: str) -> str:
    return next((str(value) for name, value in metadata or () if name == key), "")


def rpc_error_response(error: grpc.aio.AioRpcError) -> JSONResponse:
    """The HTTP answer to a failed gRPC call: mapped status, its message and details, request id, and the
    headers HTTP clients look for (WWW-Authenticate on 401, Retry-After on a rate limit)."""
    code = error.code()
    http = HTTP_STATUS.get(code, 500)
    trailers = error.trailing_metadata()
    found = error_details.parsed(code, trailers)
    headers = {}
    if http == 401:
        headers["WWW-Authenticate"] = "Bearer"
    wait_s = error_details.retry_after_s(found)
    if http == 429 and wait_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return error_response(http, code.name, error.details() or "", trailer(trailers, REQUEST_ID_KEY), headers,
                          _json(found) if found is not None else None)
