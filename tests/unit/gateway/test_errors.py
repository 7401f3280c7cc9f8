"""Each error the gateway can meet keeps the gRPC status it had: BEFORE was written from the class table
gateway/errors.py kept before errors had kinds (issue 18), and must not change. Kinds map to their codes. An
unforeseen error is INTERNAL with a request id, and its internals go to the log only."""

import grpc
import pytest

from cxr import errors
from cxr.errors import CxrError, UnknownModelError
from cxr.images import DecodeBusyError, ImageTooLargeError, InvalidImageError
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.store.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexUnreadableError,
    StoreUnavailableError,
    UnknownFilterError,
)
from cxr.triton.errors import TritonEndpointDownError, TritonError, TritonFailedError, TritonUnavailableError
from gateway import calls
from gateway.admission import OverloadedError
from gateway.errors import status_of
from gateway.request_errors import ImageNotFoundError, InvalidRequestError, StudyNotFoundError
from gateway.thumbnails import PacsUnavailableError, ThumbnailSourceError

Code = grpc.StatusCode
BEFORE = {
    InvalidRequestError: Code.INVALID_ARGUMENT,
    InvalidImageError: Code.INVALID_ARGUMENT,
    ImageTooLargeError: Code.INVALID_ARGUMENT,
    UnknownFilterError: Code.INVALID_ARGUMENT,
    UnknownModelError: Code.NOT_FOUND,
    StudyNotFoundError: Code.NOT_FOUND,
    ImageNotFoundError: Code.NOT_FOUND,
    ThumbnailSourceError: Code.NOT_FOUND,
    PacsUnavailableError: Code.UNAVAILABLE,
    TritonUnavailableError: Code.UNAVAILABLE,
    TritonEndpointDownError: Code.UNAVAILABLE,
    StoreUnavailableError: Code.UNAVAILABLE,
    IndexMismatchError: Code.FAILED_PRECONDITION,
    IndexMissingError: Code.FAILED_PRECONDITION,
    IndexCorruptError: Code.FAILED_PRECONDITION,
    IndexUnreadableError: Code.FAILED_PRECONDITION,
    OverloadedError: Code.RESOURCE_EXHAUSTED,
    DecodeBusyError: Code.RESOURCE_EXHAUSTED,
    TritonFailedError: Code.INTERNAL,
    TritonError: Code.INTERNAL,
    CxrError: Code.INTERNAL,
}


@pytest.mark.parametrize("error, code", BEFORE.items(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_every_error_keeps_the_status_it_had(error, code):
    assert status_of(error("the message")) == code
KINDS = {
    errors.InvalidArgumentError: Code.INVALID_ARGUMENT,
    errors.NotFoundError: Code.NOT_FOUND,
    errors.FailedPreconditionError: Code.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: Code.RESOURCE_EXHAUSTED,
    errors.UnavailableError: Code.UNAVAILABLE,
    errors.UnauthenticatedError: Code.UNAUTHENTICATED,
    errors.InternalError: Code.INTERNAL,
}


@pytest.mark.parametrize("kind, code", KINDS.items(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_each_kind_maps_to_its_grpc_code(kind, code):
    assert status_of(kind("the message")) == code


def test_an_image_is_not_a_study_but_both_are_not_found():
    image = ImageNotFoundError("the image named in image_id is not in the cxr-mini index")
    assert not isinstance(image, StudyNotFoundError)
    assert status_of(image) == status_of(StudyNotFoundError("the study")) == Code.NOT_FOUND
    assert str(image) == "the image named in image_id is not in the cxr-mini index"


def test_an_unforeseen_error_is_internal_with_a_request_id_and_no_internals(make_server, caplog):
    server = make_server()
    with pytest.raises(grpc.RpcError) as error:
        server.stub.SearchByText(pb.SearchByTextRequest(text="patient jane roe crash", top_k=1))
    assert error.value.code() == grpc.StatusCode.INTERNAL
    request_id = dict(error.value.trailing_metadata())[calls.REQUEST_ID_KEY]
    assert request_id in error.value.details() and "ZeroDivision" not in error.value.details()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert request_id in logged and "ZeroDivisionError" in logged and "jane roe" not in logged
