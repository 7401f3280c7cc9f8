"""Why an index cannot be served or a query cannot be answered, whatever the backend; each is of a kind
(cxr/errors.py) that the gateway maps to a gRPC status (gateway/errors.py)."""

from __future__ import annotations

from cxr.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError


class IndexMismatchError(FailedPreconditionError):
    """The index was built by another model, dimension or export."""


class IndexMissingError(FailedPreconditionError):
    """No index where one was expected."""


class IndexCorruptError(FailedPreconditionError):
    """An index is damaged, truncated or does not match its manifest's checksum."""


class IndexUnreadableError(FailedPreconditionError):
    """The index's files cannot be read or copied where they are served from (permissions, no room):
    the build may be sound, the machine needs an operator."""


class IndexReadOnlyError(FailedPreconditionError):
    """A commit (a deletion, an image added) to an index whose folder this process cannot write: a
    read-only mount, as the gateway's deployments give it, or another owner."""


class StoreUnavailableError(UnavailableError):
    """The vector store cannot be reached (a Milvus cluster down); queries may succeed again later."""


class UnknownFilterError(InvalidArgumentError, ValueError):
    """A filter value that no image in the index carries."""


class TooFewToTrainError(InvalidArgumentError):
    """An index type that learns from the vectors was asked for an archive with too few of them."""


class ImagesNotFoundError(NotFoundError, KeyError):
    """Images asked for by id (VectorStore.vectors) that the index does not hold; `missing` names them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
