"""Why an index cannot be served or a query cannot be answered, whatever the backend; the gateway maps
each to a gRPC status (gateway/errors.py)."""

from __future__ import annotations

from cxr.errors import CxrError


class IndexMismatchError(CxrError):
    """The index was built by another model, dimension or export."""


class IndexMissingError(CxrError):
    """No index where one was expected."""


class IndexCorruptError(CxrError):
    """An index is damaged, truncated or does not match its manifest's checksum."""


class IndexUnreadableError(CxrError):
    """The index's files cannot be read or copied where they are served from (permissions, no room):
    the build may be sound, the machine needs an operator."""


class StoreUnavailableError(CxrError):
    """The vector store cannot be reached (a Milvus cluster down); queries may succeed again later."""


class UnknownFilterError(CxrError, ValueError):
    """A filter value that no image in the index carries."""
