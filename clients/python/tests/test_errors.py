"""from_rpc_error: one type per status code, the google.rpc details read (ErrorInfo, RetryInfo, BadRequest,
RequestInfo), RateLimited where the gateway names a wait, and details that do not fit are ignored, never fatal."""

import grpc
import pytest
from scripted_server import status_details

import cxr_client
from cxr_client.errors import from_rpc_error

Code = grpc.StatusCode


class Failed(grpc.RpcError):
    def __init__(self, code, message="m", trailers=()):
        self._code, self._message, self._trailers = code, message, trailers

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize("code, kind", [
    (Code.INVALID_ARGUMENT, cxr_client.InvalidArgument), (Code.NOT_FOUND, cxr_client.NotFound),
    (Code.PERMISSION_DENIED, cxr_client.PermissionDenied), (Code.UNAUTHENTICATED, cxr_client.Unauthenticated),
    (Code.RESOURCE_EXHAUSTED, cxr_client.ResourceExhausted), (Code.FAILED_PRECONDITION, cxr_client.FailedPrecondition),
    (Code.UNAVAILABLE, cxr_client.Unavailable), (Code.DEADLINE_EXCEEDED, cxr_client.DeadlineExceeded),
    (Code.UNIMPLEMENTED, cxr_client.Unimplemented), (Code.INTERNAL, cxr_client.Internal),
    (Code.UNKNOWN, cxr_client.Internal), (Code.CANCELLED, cxr_client.Cancelled), (Code.ABORTED, cxr_client.CxrError),
])
def test_each_code_has_its_type(code, kind):
    error = from_rpc_error(Failed(code))
    assert type(error) is kind and error.code == code and error.retry_after is None and error.reason == ""


def test_the_details_are_read_and_shown():
    details = status_details(Code.PERMISSION_DENIED, "GetStudy needs the scope 'studies'", "PERMISSION_DENIED")
    error = from_rpc_error(Failed(Code.PERMISSION_DENIED, "GetStudy needs the scope 'studies'", (
        ("x-request-id", "abc"), ("grpc-status-details-bin", details))))
    assert (error.reason, error.domain, error.metadata, error.request_id) == (
        "PERMISSION_DENIED", "cxr-retrieval", {"scope": "search"}, "abc")
    assert str(error) == "PERMISSION_DENIED: GetStudy needs the scope 'studies' [PERMISSION_DENIED] (request id abc)"
    assert [type(m).__name__ for m in error.details] == ["ErrorInfo"]


def test_a_named_wait_makes_a_rate_limit_from_retry_info_or_the_deprecated_trailer():
    details = status_details(Code.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMIT", retry_after_ms=1500)
    error = from_rpc_error(Failed(Code.RESOURCE_EXHAUSTED, "slow down", (("grpc-status-details-bin", details),)))
    assert isinstance(error, cxr_client.RateLimited) and error.retry_after == 1.5
    old = from_rpc_error(Failed(Code.RESOURCE_EXHAUSTED, "slow down", (("retry-after-ms", "250"),)))
    assert isinstance(old, cxr_client.RateLimited) and old.retry_after == 0.25


def test_details_of_another_code_or_unreadable_ones_are_ignored():
    other = status_details(Code.NOT_FOUND, "x", "STUDY_NOT_FOUND")
    assert from_rpc_error(Failed(Code.INTERNAL, "x", (("grpc-status-details-bin", other),))).reason == ""
    garbage = from_rpc_error(Failed(Code.INTERNAL, "x", (("grpc-status-details-bin", b"\xff\x00\xff"),)))
    assert garbage.reason == "" and garbage.details == ()


def test_a_failed_tls_handshake_names_the_remedy():
    error = from_rpc_error(Failed(Code.UNAVAILABLE, "failed to connect: Ssl handshake failed: WRONG_VERSION_NUMBER"))
    assert "insecure=True" in error.message and "ca" in error.message
