"""Errors a person can act on: each names the problem and the remedy.

Every error class subclasses one kind below, named after the gRPC canonical code (google.rpc.Code) it
stands for: the gateway maps kinds, not classes, to gRPC statuses (gateway/errors.py) and those to HTTP
(gateway/http_errors.py), so a module's new error needs no entry anywhere else. An error with no kind is
an internal one (INTERNAL at the gateway); the CLI exits with a status per kind (cxr_cli/exit_codes.py)."""


class CxrError(Exception):
    """Base class: the message is meant for the user, as it is."""


class InvalidArgumentError(CxrError):
    """What the caller sent is wrong (a field, a value, the bytes): change it; sent again as is, it fails again."""


class NotFoundError(CxrError):
    """What the caller named (a model, a study, an image) is not here: check the name."""


class FailedPreconditionError(CxrError):
    """The system is not in the state the call needs (an index, a setting, a file): an operator fixes it."""


class ResourceExhaustedError(CxrError):
    """Too much is in flight, or room has run out: retry later with backoff, or ask for less."""


class UnavailableError(CxrError):
    """Something the call needs cannot be reached for now: retry later with backoff."""


class UnauthenticatedError(CxrError):
    """The caller's credential is missing or not valid: send a valid one."""


class InternalError(CxrError):
    """A dependency answered with an error the caller cannot fix: retrying as is may not help."""


class UnknownModelError(NotFoundError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class CheckpointUnavailableError(FailedPreconditionError):
    """Weights could not be loaded: offline, gated, or a bad local directory."""


class ExportError(FailedPreconditionError):
    """The exported graph disagrees with the registry, or export itself failed."""
