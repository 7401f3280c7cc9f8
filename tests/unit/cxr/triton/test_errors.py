"""Triton's errors: one family, and tritonclient's exception translated into it."""

import pytest
from tritonclient.utils import InferenceServerException

from cxr.errors import CxrError
from cxr.triton.errors import (
    TritonDeadlineError,
    TritonEndpointDownError,
    TritonError,
    TritonFailedError,
    TritonStartError,
    TritonUnavailableError,
    translate,
)


@pytest.mark.parametrize("status, message, kind", [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", TritonEndpointDownError),
    ("StatusCode.UNAVAILABLE", "Socket closed", TritonEndpointDownError),
    ("StatusCode.INTERNAL", "Request for unknown model: 'x' is not found", TritonEndpointDownError),
    ("StatusCode.UNAVAILABLE", "Request for unknown model: 'x' has no available versions", TritonEndpointDownError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", TritonDeadlineError),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input", TritonFailedError),
])
def test_only_unreachable_or_modelless_endpoints_count_as_down(status, message, kind):
    error = translate(InferenceServerException(message, status=status), "x", "127.0.0.1:8001")
    assert type(error) is kind


def test_a_down_endpoint_is_named_with_the_remedy_and_a_deadline_is_unavailability():
    down = translate(InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE"), "m_text", "h:1")
    late = translate(InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), "m", "h")
    assert str(down) == "Triton at h:1 cannot serve m_text right now (Socket closed); retry shortly, or start it " \
                        "with `make serve`"
    assert isinstance(late, TritonUnavailableError) and str(late) == "Triton did not answer for m within the deadline"


def test_every_triton_error_is_one_family_under_cxr_error():
    for kind in (TritonStartError, TritonUnavailableError, TritonEndpointDownError, TritonDeadlineError,
                 TritonFailedError):
        assert issubclass(kind, TritonError) and issubclass(kind, CxrError)
    assert not issubclass(TritonFailedError, TritonUnavailableError)
