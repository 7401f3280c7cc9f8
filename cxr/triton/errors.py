"""Triton's errors, one family for every caller: the gateway maps them to gRPC statuses, index builds
and the CLI print them. `translate` turns tritonclient's exception into one of them."""

from __future__ import annotations

from tritonclient.utils import InferenceServerException

from cxr.errors import CxrError, FailedPreconditionError, InternalError, UnavailableError


class TritonError(CxrError):
    """Triton could not be started, reached or stopped, or failed a request: the family's base."""


class TritonStartError(TritonError, FailedPreconditionError):
    """The local tritonserver could not be started or did not become ready."""


class TritonTlsFileError(TritonError, FailedPreconditionError):
    """A TLS file the settings name for the connection to Triton is not there."""


class TritonUnavailableError(TritonError, UnavailableError):
    """Triton cannot be reached or its model is not ready."""


class TritonEndpointDownError(TritonUnavailableError):
    """One endpoint cannot be reached or lacks the model: another endpoint may answer."""


class TritonDeadlineError(TritonUnavailableError):
    """Triton did not answer within the caller's deadline."""


class TritonFailedError(TritonError, InternalError):
    """Triton answered with an error other than unavailability."""


def translate(exc: InferenceServerException, triton_name: str, url: str) -> TritonError:
    """The family member for tritonclient's `exc` from the endpoint at `url` serving `triton_name`. Only
    an unreachable endpoint or one without the model counts as down: those are worth another endpoint."""
    status = str(exc.status() or "")
    if "UNAVAILABLE" in status or "not ready" in str(exc.message()) or "unknown model" in str(exc.message()):
        return TritonEndpointDownError(f"Triton at {url} cannot serve {triton_name} right now ({exc.message()}); "
                                       "retry shortly, or start it with `make serve`")
    if "DEADLINE_EXCEEDED" in status:
        return TritonDeadlineError(f"Triton did not answer for {triton_name} within the deadline")
    return TritonFailedError(f"Triton failed on {triton_name}: {exc.message()}")
