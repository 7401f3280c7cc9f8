"""What `cxr` exits with: one code per thing a script or an operator does next, from the error's kind.

The kinds of cxr/errors.py are named after gRPC's canonical codes; the client package's errors carry the
gateway's code itself. Both go through one table from the code's name to the exit status, so `cxr search`
and a local command that fail alike exit alike. `--help`'s epilog and docs/cli.md's table are `MEANINGS`."""

from __future__ import annotations

import errno
import textwrap
from pathlib import Path

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

OK = 0
INTERNAL = 1
USAGE = 2  # argparse's own status for a command line it cannot parse
BAD_INPUT = 3
NOT_FOUND = 4
UNAVAILABLE = 5
REFUSED = 6
INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

MEANINGS = {
    OK: "success",
    INTERNAL: "internal error: a bug (its traceback is printed: report it) or a failure the command cannot "
              "explain; `cxr audit verify`: the chain is broken",
    USAGE: "usage: the command line is wrong (an unknown option, a missing or conflicting argument): see "
           "`cxr COMMAND --help`",
    BAD_INPUT: "bad input: an argument, a file's content or a setting is wrong, or the state the command needs "
               "is not there (no index built yet, an index of another model, a port in use): fix it; run as is, it "
               "fails again",
    NOT_FOUND: "not found: what the command names does not exist (a model unknown or not exported, a study, an "
               "image, an API key, an input file)",
    UNAVAILABLE: "unavailable: Triton, the gateway, the PACS or the vector store cannot be reached or did not "
                 "answer in time: retry later",
    REFUSED: "refused: a credential is missing, not valid or lacks the scope, a rate or size limit was reached, "
             "or the file system denied access",
    INTERRUPTED: "interrupted (Ctrl-C)",
}



class UsageError(InvalidArgumentError):
    """Arguments that parse but do not go together (argparse cannot say so): exits USAGE, as argparse's own."""


# gRPC's canonical code (by name) -> exit status; codes not here (INTERNAL, UNKNOWN, UNIMPLEMENTED,
# CANCELLED, DATA_LOSS) exit INTERNAL. FAILED_PRECONDITION is bad input, not a code of its own: like
# INVALID_ARGUMENT it is not worth a retry until a person changes something (a setting, a file, an export).
OF_STATUS = {
    "INVALID_ARGUMENT": BAD_INPUT, "OUT_OF_RANGE": BAD_INPUT, "FAILED_PRECONDITION": BAD_INPUT,
    "ALREADY_EXISTS": BAD_INPUT, "NOT_FOUND": NOT_FOUND, "UNAVAILABLE": UNAVAILABLE, "DEADLINE_EXCEEDED": UNAVAILABLE,
    "UNAUTHENTICATED": REFUSED, "PERMISSION_DENIED": REFUSED, "RESOURCE_EXHAUSTED": REFUSED,
}
# The first kind an error is an instance of gives its code, as at the gateway's edge (gateway/errors.py).
STATUS_OF_KIND = {
    InvalidArgumentError: "INVALID_ARGUMENT", NotFoundError: "NOT_FOUND",
    FailedPreconditionError: "FAILED_PRECONDITION",
    ResourceExhaustedError: "RESOURCE_EXHAUSTED", UnavailableError: "UNAVAILABLE",
    UnauthenticatedError: "UNAUTHENTICATED", InternalError: "INTERNAL",
}
# The operating system's refusals, by errno, for an OSError no command turned into an error of ours.
STATUS_OF_ERRNO = {
    errno.ENOENT: "NOT_FOUND", errno.EISDIR: "INVALID_ARGUMENT", errno.ENOTDIR: "INVALID_ARGUMENT",
    errno.EEXIST: "ALREADY_EXISTS", errno.ENAMETOOLONG: "INVALID_ARGUMENT", errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED", errno.EROFS: "PERMISSION_DENIED", errno.ENOSPC: "RESOURCE_EXHAUSTED",
    errno.EDQUOT: "RESOURCE_EXHAUSTED", errno.ECONNREFUSED: "UNAVAILABLE", errno.ETIMEDOUT: "UNAVAILABLE",
    errno.EHOSTUNREACH: "UNAVAILABLE", errno.ENETUNREACH: "UNAVAILABLE",
}


def of_status(name: str | None) -> int:
    """The exit status for a gRPC status code's name (None, or a code not in the table: INTERNAL)."""
    return OF_STATUS.get(name or "", INTERNAL)


def of_error(error: BaseException) -> int:
    """The exit status for an error of ours (by its kind; none: INTERNAL) or the operating system's."""
    if isinstance(error, UsageError):
        return USAGE
    if isinstance(error, CxrError):
        return of_status(next((status for kind, status in STATUS_OF_KIND.items() if isinstance(error, kind)), None))
    if isinstance(error, OSError):
        return of_status(STATUS_OF_ERRNO.get(error.errno))
    return INTERNAL


def describe_os_error(error: OSError) -> str:
    """'PATH: No such file or directory', as a shell says it, rather than Python's '[Errno 2] ...'."""
    if error.filename is None or not error.strerror:
        return str(error)
    if error.errno == errno.EEXIST and not Path(error.filename).is_dir():  # mkdir(parents=True) met a file
        return f"{error.filename}: not a directory (a file of that name is in the way)"
    target = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{error.filename}{target}: {error.strerror}"


def epilog(width: int = 100) -> str:
    """The exit statuses, for `cxr --help`."""
    return "exit status:\n" + "\n".join(textwrap.fill(meaning, width, initial_indent=f"  {code:>3}  ",
                                                        subsequent_indent=" " * 7)
                                          for code, meaning in MEANINGS.items())
