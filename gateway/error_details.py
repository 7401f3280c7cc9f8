"""The google.rpc error details every gateway error carries, built here and nowhere else.

A failed call's trailers hold a google.rpc.Status (`grpc-status-details-bin`, as grpcio-status and every
gRPC language's status helpers read it) with:
- ErrorInfo: domain "cxr-retrieval" and a stable reason to branch on: the refusal's label as the metrics
  count it (RATE_LIMIT, CONCURRENCY, DRAINING, UNAUTHENTICATED, ...), else the error's class in upper snake
  case without "Error" (UNKNOWN_MODEL, STUDY_NOT_FOUND, INVALID_REQUEST, ...), else the status code's name;
- RetryInfo when the gateway knows how long to wait (the rate limits), with `grpc-retry-pushback-ms` so that
  a client's gRPC retry policy waits that long, or does not retry when the wait outlasts its deadline;
  the `retry-after-ms` trailer says the same and is deprecated (docs/clients.md, "Errors");
- BadRequest naming the request field at fault, on INVALID_ARGUMENT, when one is;
- RequestInfo: the call's request id.
The HTTP side writes the same details into its error JSON (gateway/http_errors.py).
"""

from __future__ import annotations

import math
import re

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from cxr.errors import CxrError
from cxr.metadata_keys import RETRY_AFTER_KEY

DOMAIN = "cxr-retrieval"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRPC's retry policy: wait this long; negative: do not retry
_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# A violation's description repeats the message: clipped, so that the trailers stay well within the 8 KB
# clients accept (calls.MAX_DETAILS_CHARS bounds the message itself).
MAX_DESCRIPTION_CHARS = 300


def reason_of(error: Exception) -> str:
    """UnknownModelError -> UNKNOWN_MODEL: the error's class as an ErrorInfo reason (a bare CxrError is INTERNAL,
    as its status is)."""
    if type(error) is CxrError:
        return "INTERNAL"
    name = type(error).__name__.removesuffix("Error") or type(error).__name__
    return _WORD.sub("_", name).upper()


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[: MAX_DESCRIPTION_CHARS - 4] + " ..."


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(max(0, math.ceil(seconds * 1000)))
    return duration


def status(code: grpc.StatusCode, message: str, reason: str, request_id: str = "", retry_after_s: float | None = None,
           field: str = "", metadata: dict[str, str] | None = None) -> status_pb2.Status:
    """The google.rpc.Status of an error: its code, message and details."""
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})]
    if retry_after_s is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after_s)))
    if field and code == grpc.StatusCode.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=_clipped(message))
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if request_id:
        details.append(error_details_pb2.RequestInfo(request_id=request_id))
    return status_pb2.Status(code=code.value[0], message=message, details=[_packed(d) for d in details])


def retry_trailers(retry_after_s: float | None, time_remaining: float | None) -> tuple[tuple[str, str], ...]:
    """The retry hints beside RetryInfo: gRPC's pushback (-1, no retry, when the wait outlasts the call's
    deadline: the client hears of the limit now, not at its deadline) and the deprecated trailer."""
    if retry_after_s is None:
        return ()
    wait_ms = math.ceil(retry_after_s * 1000)
    pushback = wait_ms if time_remaining is None or retry_after_s < time_remaining else -1
    return (PUSHBACK_KEY, str(pushback)), (RETRY_AFTER_KEY, str(wait_ms))


def trailers(code: grpc.StatusCode, message: str, reason: str, request_id: str = "", retry_after_s: float | None = None,
             field: str = "", metadata: dict[str, str] | None = None,
             time_remaining: float | None = None) -> tuple[tuple[str, str | bytes], ...]:
    """What a failed call's trailers carry besides its request id: the details and the retry hints."""
    details = status(code, message, reason, request_id, retry_after_s, field, metadata).SerializeToString()
    return ((STATUS_DETAILS_KEY, details),) + retry_trailers(retry_after_s, time_remaining)


def parsed(code: grpc.StatusCode, trailing_metadata) -> status_pb2.Status | None:
    """The google.rpc.Status in a failed call's trailers, when it is there and of the call's code."""
    value = next((v for k, v in trailing_metadata or () if k == STATUS_DETAILS_KEY), None)
    if not isinstance(value, bytes):
        return None
    try:
        found = status_pb2.Status.FromString(value)
    except Exception:  # noqa: BLE001 - a peer's bad bytes: no details, not a failed answer
        return None
    return found if found.code == code.value[0] else None


def unpacked(found: status_pb2.Status) -> list:
    """The detail messages of a Status that are of the google.rpc types."""
    kinds = (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest,
             error_details_pb2.RequestInfo)
    messages = []
    for packed in found.details:
        for kind in kinds:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                messages.append(message)
    return messages


def retry_after_s(found: status_pb2.Status | None) -> float | None:
    """The wait a Status's RetryInfo names, or None."""
    for message in unpacked(found) if found is not None else ():
        if isinstance(message, error_details_pb2.RetryInfo):
            return message.retry_delay.ToMilliseconds() / 1000
    return None
