"""google.rpc details on every gateway error: ErrorInfo with a stable reason in the cxr-retrieval domain,
RetryInfo and gRPC's retry pushback on a rate limit (no retry when the wait outlasts the call's deadline),
BadRequest naming a field on INVALID_ARGUMENT only, RequestInfo with the call's request id."""

import grpc
import pytest

from cxr.errors import CxrError, InvalidArgumentError, NotFoundError, UnknownModelError
from cxr.metadata_keys import RETRY_AFTER_KEY
from cxr.triton.errors import TritonEndpointDownError
from gateway import auth, calls, error_details
from gateway.admission import AdmissionInterceptor, Limits
from gateway.request_errors import InvalidRequestError, StudyNotFoundError
from support.interceptor_server import search

Code = grpc.StatusCode


def _by_type(found) -> dict:
    return {type(message).__name__: message for message in error_details.unpacked(found)}


@pytest.mark.parametrize("error, reason", [
    (UnknownModelError("m"), "UNKNOWN_MODEL"), (StudyNotFoundError("s"), "STUDY_NOT_FOUND"),
    (InvalidRequestError("x"), "INVALID_REQUEST"), (TritonEndpointDownError("t"), "TRITON_ENDPOINT_DOWN"),
    (NotFoundError("n"), "NOT_FOUND"), (InvalidArgumentError("i"), "INVALID_ARGUMENT"), (CxrError("c"), "INTERNAL"),
])
def test_the_reason_is_the_error_class_in_upper_snake_case(error, reason):
    assert error_details.reason_of(error) == reason


def test_a_status_carries_the_reason_domain_wait_field_and_request_id():
    found = error_details.status(Code.INVALID_ARGUMENT, "top_k must be between 1 and 1000", "INVALID_REQUEST",
                                 "abc123", retry_after_s=1.2345, field="top_k", metadata={"scope": "search"})
    assert found.code == Code.INVALID_ARGUMENT.value[0] and found.message == "top_k must be between 1 and 1000"
    details = _by_type(found)
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("INVALID_REQUEST", "cxr-retrieval")
    assert dict(details["ErrorInfo"].metadata) == {"scope": "search"}
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 1235  # rounded up: never early
    assert [(v.field, v.description) for v in details["BadRequest"].field_violations] == [("top_k", found.message)]
    assert details["RequestInfo"].request_id == "abc123"


def test_a_field_is_named_only_for_invalid_argument():
    assert "BadRequest" not in _by_type(error_details.status(Code.NOT_FOUND, "no study", "STUDY_NOT_FOUND",
                                                             field="study_uid"))


@pytest.mark.parametrize("wait_s, remaining_s, pushback", [(0.25, None, "250"), (0.25, 5.0, "250"), (2.0, 1.0, "-1")])
def test_the_pushback_is_the_wait_or_no_retry_when_the_deadline_comes_first(wait_s, remaining_s, pushback):
    hints = dict(error_details.retry_trailers(wait_s, remaining_s))
    assert hints == {error_details.PUSHBACK_KEY: pushback, RETRY_AFTER_KEY: str(round(wait_s * 1000))}
    assert error_details.retry_trailers(None, remaining_s) == ()


def test_details_of_another_code_or_unreadable_are_ignored():
    raw = error_details.status(Code.NOT_FOUND, "x", "NOT_FOUND").SerializeToString()
    assert error_details.parsed(Code.NOT_FOUND, ((error_details.STATUS_DETAILS_KEY, raw),)) is not None
    assert error_details.parsed(Code.INTERNAL, ((error_details.STATUS_DETAILS_KEY, raw),)) is None
    assert error_details.parsed(Code.NOT_FOUND, ((error_details.STATUS_DETAILS_KEY, b"\xff\xff"),)) is None
    assert error_details.parsed(Code.NOT_FOUND, ()) is None


def _rate_limited(server, timeout: float) -> grpc.RpcError:
    search(server.stub)  # the burst of one
    with pytest.raises(grpc.RpcError) as error:
        search(server.stub, timeout=timeout)
    return error.value


def test_a_rate_limit_refusal_says_the_wait_in_retry_info_and_the_pushback(make_server):
    server = make_server(AdmissionInterceptor(Limits(rate_per_s=2.0, burst=1)))
    error = _rate_limited(server, timeout=10)
    trailers = dict(error.trailing_metadata())
    details = _by_type(error_details.parsed(error.code(), error.trailing_metadata()))
    assert error.code() == Code.RESOURCE_EXHAUSTED and details["ErrorInfo"].reason == "RATE_LIMIT"
    wait_ms = details["RetryInfo"].retry_delay.ToMilliseconds()
    assert 0 < wait_ms <= 500 and trailers[error_details.PUSHBACK_KEY] == str(wait_ms)
    assert trailers[RETRY_AFTER_KEY] == str(wait_ms)  # deprecated, still sent
    assert details["RequestInfo"].request_id == trailers[calls.REQUEST_ID_KEY]


def test_a_wait_longer_than_the_call_s_deadline_is_not_to_be_retried(make_server):
    server = make_server(AdmissionInterceptor(Limits(rate_per_s=0.5, burst=1)))
    error = _rate_limited(server, timeout=0.5)
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())[error_details.PUSHBACK_KEY] == "-1"


class Scopes:
    def verify(self, token):
        return auth.Principal("someone", "jwt", frozenset(token.split(",")))


def test_refusals_by_auth_name_their_reason_and_the_scope_missing(make_server):
    server = make_server(auth.AuthInterceptor(Scopes(), {calls.RETRIEVAL_PREFIX + "SearchByText": "studies"}))
    cases = [((), Code.UNAUTHENTICATED, "UNAUTHENTICATED"),
             ((("authorization", "Bearer search"),), Code.PERMISSION_DENIED, "PERMISSION_DENIED")]
    for metadata, code, reason in cases:
        with pytest.raises(grpc.RpcError) as error:
            search(server.stub, metadata=metadata)
        info = _by_type(error_details.parsed(error.value.code(), error.value.trailing_metadata()))["ErrorInfo"]
        assert error.value.code() == code and info.reason == reason
    assert dict(info.metadata) == {"scope": "studies"}


def test_the_details_of_the_longest_message_stay_small():
    message = "x" * calls.MAX_DETAILS_CHARS
    trailers = error_details.trailers(Code.INVALID_ARGUMENT, message, "INVALID_REQUEST", "r" * 32, 1.0,
                                      "queries[255].text.text", {"scope": "search"})
    assert sum(len(key) + len(value) for key, value in trailers) < 2000  # base64 on the wire: < 2.7 KB
