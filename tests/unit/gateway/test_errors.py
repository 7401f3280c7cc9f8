"""Each error the gateway can meet keeps the gRPC status it had: BEFORE was written from the class table
gateway/errors.py kept before errors had kinds (issue 18), and must not change. Kinds map to their codes."""

import grpc
import pytest

from cxr import errors
from cxr.errors import CxrError, UnknownModelError
from cxr.images import DecodeBusyError, ImageTooLargeError, InvalidImageError
from cxr.store.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexUnreadableError,
    StoreUnavailableError,
    UnknownFilterError,
)
from cxr.triton.errors import TritonEndpointDownError, TritonError, TritonFailedError, TritonUnavailableError
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
