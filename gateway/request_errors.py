"""What a request can get wrong that only the Retrieval service can tell: a field out of bounds, a study or
an image the index does not hold. Each is of a kind (cxr/errors.py) that gateway/errors.py maps."""

from __future__ import annotations

from cxr.errors import InvalidArgumentError, NotFoundError


class InvalidRequestError(InvalidArgumentError, ValueError):
    """A request field is empty, too large or out of range."""


class StudyNotFoundError(NotFoundError):
    """No indexed image belongs to this study."""


class ImageNotFoundError(NotFoundError):
    """No indexed image has this id (or this gateway renders no thumbnails): an image is not a study."""
