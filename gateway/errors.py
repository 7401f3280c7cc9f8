"""Every gateway error maps to one gRPC status, here and nowhere else."""

from __future__ import annotations

import functools

import grpc

from cxr.errors import CxrError, UnknownModelError
from cxr.images import InvalidImageError
from cxr.index_store import IndexMismatchError, IndexMissingError
from gateway.embedder import TritonFailedError, TritonUnavailableError
from gateway.search import UnknownFilterError


class InvalidRequestError(CxrError, ValueError):
    """A request field is empty, too large or out of range."""


class StudyNotFoundError(CxrError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


STATUS = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidImageError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownFilterError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.NOT_FOUND,
    StudyNotFoundError: grpc.StatusCode.NOT_FOUND,
    TritonUnavailableError: grpc.StatusCode.UNAVAILABLE,
    IndexMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    IndexMissingError: grpc.StatusCode.FAILED_PRECONDITION,
    TritonFailedError: grpc.StatusCode.INTERNAL,
}


def status_of(error: CxrError) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(handler):
    """Abort the call with the mapped status and the error's own message."""

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except CxrError as error:
            await context.abort(status_of(error), str(error))

    return wrapper
