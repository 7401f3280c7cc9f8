"""Every gateway error maps to one gRPC status, here and nowhere else."""

from __future__ import annotations

import functools
import logging
import traceback

import grpc

from cxr.errors import CxrError, UnknownModelError
from cxr.images import DecodeBusyError, InvalidImageError
from cxr.store.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexUnreadableError,
    StoreUnavailableError,
    UnknownFilterError,
)
from cxr.triton.errors import TritonFailedError, TritonUnavailableError
from gateway import calls
from gateway.admission import OverloadedError
from gateway.thumbnails import PacsUnavailableError, ThumbnailSourceError

log = logging.getLogger("cxr.gateway")


class InvalidRequestError(CxrError, ValueError):
    """A request field is empty, too large or out of range."""


class StudyNotFoundError(CxrError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class ImageNotFoundError(StudyNotFoundError):
    """No indexed image has this id."""


STATUS = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidImageError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownFilterError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.NOT_FOUND,
    StudyNotFoundError: grpc.StatusCode.NOT_FOUND,
    ThumbnailSourceError: grpc.StatusCode.NOT_FOUND,
    PacsUnavailableError: grpc.StatusCode.UNAVAILABLE,
    TritonUnavailableError: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    IndexMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    IndexMissingError: grpc.StatusCode.FAILED_PRECONDITION,
    IndexCorruptError: grpc.StatusCode.FAILED_PRECONDITION,
    IndexUnreadableError: grpc.StatusCode.FAILED_PRECONDITION,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DecodeBusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TritonFailedError: grpc.StatusCode.INTERNAL,
}


def status_of(error: CxrError) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(handler):
    """Abort the call with the mapped status and the error's own message. Anything unforeseen
    becomes INTERNAL with the request id, and its traceback goes to the log, not to the client."""

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            if request is calls.MALFORMED:
                raise InvalidRequestError(f"the request is not a valid {handler.__name__} message: encode it as "
                                          "protos/cxr/retrieval/v1/retrieval.proto defines it")
            return await handler(self, request, context)
        except CxrError as error:
            await calls.abort(context, status_of(error), str(error))
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - the safety net: no call may end as UNKNOWN
            call = calls.current()
            request_id = call.request_id if call else "-"
            # The type and the frames, not the message: a library's message may quote the query.
            log.error("request %s (%s): unexpected %s\n%s", request_id, handler.__name__, type(error).__name__,
                      "".join(traceback.format_tb(error.__traceback__)))
            await calls.abort(context, grpc.StatusCode.INTERNAL,
                              f"internal error (request id {request_id}); the gateway logged it")

    return wrapper
