"""What a request can get wrong that only the Retrieval service can tell: a field out of bounds, a study or
an image the index does not hold. Each is of a kind (cxr/errors.py) that gateway/errors.py maps; an error
that names the request field at fault (`field`) is answered with a google.rpc.BadRequest naming it too."""

from __future__ import annotations

from cxr.errors import CxrError, InvalidArgumentError, NotFoundError


class InvalidRequestError(InvalidArgumentError, ValueError):
    """A request field is empty, too large or out of range."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field  # the request field's path, as the proto names it ("top_k", "queries[2].text.text")


class StudyNotFoundError(NotFoundError):
    """No indexed image belongs to this study."""


class ImageNotFoundError(NotFoundError):
    """No indexed image has this id (or this gateway renders no thumbnails): an image is not a study."""


def field_of(error: CxrError) -> str:
    """The request field `error` names, or ""."""
    return getattr(error, "field", "") or ""


def at_field(error: CxrError, field: str) -> CxrError:
    """`error`, naming `field` as the one at fault unless it already names one (a decoder's error about
    the uploaded bytes is about the `image` field)."""
    if not field_of(error):
        error.field = field
    return error
