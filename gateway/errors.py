"""Every gateway error maps to one gRPC status, by its kind (cxr/errors.py), here and nowhere else; its
google.rpc details (gateway/error_details.py) name its class as the reason and the request field at fault."""

from __future__ import annotations

import functools
import logging
import traceback

import grpc

from cxr.errors import (
    CxrError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from gateway import calls, error_details
from gateway.request_errors import InvalidRequestError, field_of

log = logging.getLogger("cxr.gateway")

# The first row an error is an instance of gives its status; none (a bare CxrError, TritonError): INTERNAL.
STATUS = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    InternalError: grpc.StatusCode.INTERNAL,
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
            await calls.abort(context, status_of(error), str(error), error_reason=error_details.reason_of(error),
                              field=field_of(error))
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
