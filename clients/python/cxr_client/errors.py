"""Typed errors, one per gRPC status the gateway answers with, each carrying what the gateway said.

    try:
        client.search_text("effusion")
    except cxr_client.RateLimited as error:
        time.sleep(error.retry_after or 1)
    except cxr_client.InvalidArgument as error:
        print(error.message, [v.field for v in error.field_violations])

Every error has `code` (grpc.StatusCode), `message` (the gateway's, meant for people), `request_id` (quote it
when reporting a problem: the gateway's log and audit trail know the call by it), and from the google.rpc
details of the error: `reason` and `domain` (ErrorInfo: a stable UPPER_SNAKE_CASE reason to branch on, such
as RATE_LIMIT, UNKNOWN_MODEL, STUDY_NOT_FOUND), `metadata`, `retry_after` (seconds, RetryInfo), and
`field_violations` (BadRequest). `details` holds the detail messages themselves.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import grpc

from cxr_client import _details

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-ms"  # what gateways before RetryInfo sent; read when RetryInfo is missing


class FieldViolation(NamedTuple):
    field: str  # the request field's path, as the proto names it: "top_k", "queries[2].text.text"
    description: str


class CxrError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, request_id: str = "", reason: str = "",
                 domain: str = "", metadata: Optional[dict] = None, retry_after: Optional[float] = None,
                 field_violations: tuple = (), details: tuple = ()):
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.retry_after = retry_after
        self.field_violations = tuple(field_violations)
        self.details = tuple(details)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.code is not None else self.message
        if self.reason:
            text += f" [{self.reason}]"
        return text + (f" (request id {self.request_id})" if self.request_id else "")


class ConfigurationError(CxrError, ValueError):
    """The client was set up in a way it refuses (a token over plaintext, TLS files half given): the message
    says what to change. Raised before any call."""


class InvalidArgument(CxrError):
    """What the call sent is wrong (a field, the image bytes): change it; `field_violations` names the field."""


class NotFound(CxrError):
    """The model, study or image named is not there."""


class PermissionDenied(CxrError):
    """The credential lacks the scope the call needs (`metadata["scope"]` names it)."""


class Unauthenticated(CxrError):
    """No credential, or one the gateway does not accept (expired, another issuer, unknown key)."""


class ResourceExhausted(CxrError):
    """The gateway refused the call for load or size: retry later, or ask for less."""


class RateLimited(ResourceExhausted):
    """A rate limit: `retry_after` seconds until a call may pass (the client's own retries already waited
    when the wait fitted in the call's deadline)."""


class FailedPrecondition(CxrError):
    """The service is not in the state the call needs (no index, a bad setting): its operator fixes it."""


class Unavailable(CxrError):
    """The gateway, or something it needs, cannot be reached now: retry later (the client already retried)."""


class DeadlineExceeded(CxrError):
    """No answer within the call's deadline (retries included)."""


class Cancelled(CxrError):
    """The call was cancelled."""


class Unimplemented(CxrError):
    """The gateway does not know this call: it is older than this client."""


class Internal(CxrError):
    """The gateway failed in a way the caller cannot fix: report it with the request id."""


Code = grpc.StatusCode
KINDS = {
    Code.INVALID_ARGUMENT: InvalidArgument, Code.OUT_OF_RANGE: InvalidArgument, Code.NOT_FOUND: NotFound,
    Code.PERMISSION_DENIED: PermissionDenied, Code.UNAUTHENTICATED: Unauthenticated,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted, Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.UNAVAILABLE: Unavailable, Code.DEADLINE_EXCEEDED: DeadlineExceeded, Code.CANCELLED: Cancelled,
    Code.UNIMPLEMENTED: Unimplemented, Code.INTERNAL: Internal, Code.UNKNOWN: Internal, Code.DATA_LOSS: Internal,
}
RATE_LIMIT_REASONS = frozenset({"RATE_LIMIT", "REFUSED_RATE"})
TLS_HINT = (" (the TLS handshake failed: for a gateway that serves plaintext on a trusted network say insecure=True; "
            "else check `ca`, the CA of the gateway's certificate)")


def _trailer(metadata, key: str) -> str:
    return next((str(value) for name, value in metadata or () if name == key), "")


def _named(messages: list, name: str) -> list:
    return [m for m in messages if m.DESCRIPTOR.full_name == f"google.rpc.{name}"]


def from_rpc_error(error: grpc.RpcError) -> CxrError:
    """The typed error of a failed call, with the google.rpc details its trailers carry."""
    code = error.code()
    trailers = error.trailing_metadata() or ()
    message = error.details() or ""
    found = _details.status(code.value[0], trailers)
    messages = _details.unpacked(found) if found is not None else []
    info = (_named(messages, "ErrorInfo") or [None])[0]
    retry = _named(messages, "RetryInfo")
    retry_after = retry[0].retry_delay.ToMilliseconds() / 1000 if retry else None
    if retry_after is None and _trailer(trailers, RETRY_AFTER_KEY).isdigit():
        retry_after = int(_trailer(trailers, RETRY_AFTER_KEY)) / 1000
    violations = [FieldViolation(v.field, v.description) for b in _named(messages, "BadRequest")
                  for v in b.field_violations]
    reason = info.reason if info is not None else ""
    kind = KINDS.get(code, CxrError)
    if kind is ResourceExhausted and (retry_after is not None or reason in RATE_LIMIT_REASONS):
        kind = RateLimited
    if kind is Unavailable and "handshake" in message.lower():
        message += TLS_HINT
    request_id = _trailer(trailers, REQUEST_ID_KEY) or next(
        (m.request_id for m in _named(messages, "RequestInfo")), "")
    return kind(message, code, request_id, reason, info.domain if info is not None else "",
                dict(info.metadata) if info is not None else {}, retry_after, violations, messages)
