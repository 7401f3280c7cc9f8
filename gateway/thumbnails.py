"""Thumbnails of indexed images: read from the archive's file or from the PACS (WADO-RS), decoded
through cxr.images (so DICOM is windowed as for search), shrunk, PNG-encoded and kept in a
byte-bounded LRU cache. Access is checked before this runs: GetThumbnail needs the `studies` scope.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from cxr.errors import CxrError, NotFoundError, UnavailableError
from cxr.images import ImageLimits, decode

DEFAULT_SIZE = 256
MIN_SIZE, MAX_SIZE = 32, 512
MEDIA_TYPE = "image/png"


class ThumbnailSourceError(NotFoundError, LookupError):
    """The image is indexed but its pixels cannot be read from here (file gone, no PACS configured)."""


class PacsUnavailableError(UnavailableError):
    """The PACS holding the image did not answer."""


def size_of(requested: int) -> int:
    """The thumbnail's longer side: 0 means DEFAULT_SIZE; outside MIN_SIZE..MAX_SIZE is refused."""
    if requested == 0:
        return DEFAULT_SIZE
    if not MIN_SIZE <= requested <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels (0: {DEFAULT_SIZE}), "
                         f"not {requested}")
    return requested


def render(data: bytes, size: int, limits: ImageLimits) -> tuple[bytes, int, int]:
    """PNG bytes, width and height of the image in `data` with its longer side at most `size`."""
    image = decode(data, limits)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue(), image.width, image.height


class ThumbnailCache:
    """Rendered thumbnails by (model, image id, size), the least recently used dropped past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple[bytes, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, int, int] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: tuple[bytes, int, int]) -> None:
        if len(item[0]) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self.bytes -= len(self._items.pop(key)[0])
            self._items[key] = item
            self.bytes += len(item[0])
            while self.bytes > self.max_bytes:
                self.bytes -= len(self._items.popitem(last=False)[1][0])


class ImageSource:
    """The bytes of an indexed image: its file when the gateway can read it, else WADO-RS from the
    PACS it was indexed from (settings.dicomweb_*)."""

    def __init__(self, settings):
        self.settings = settings
        self._pacs = None
        self._lock = threading.Lock()

    def read(self, row: dict) -> bytes:
        path = row.get("path") or ""
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        if row.get("sop_instance_uid"):
            if self.settings.dicomweb_url:
                return self._wado(row)
            raise ThumbnailSourceError("the image came from a PACS: set dicomweb_url (and its "
                                       "credentials) so the gateway can fetch it over WADO-RS")
        raise ThumbnailSourceError("the image is indexed but its file is not readable from the "
                                   "gateway: mount the archive where it was indexed from")

    def _wado(self, row: dict) -> bytes:
        from cxr import dicomweb  # requests and dicomweb-client: only for images from a PACS

        try:
            return self._client().instance_bytes(row["study_instance_uid"], row["series_instance_uid"],
                                                 row["sop_instance_uid"])
        except dicomweb.InstanceFetchError as exc:
            raise ThumbnailSourceError(f"the PACS no longer has the image: {exc}") from exc
        except CxrError as exc:  # unreachable, credentials refused, TLS
            raise PacsUnavailableError(f"the PACS could not send the image: {exc}") from exc

    def _client(self):
        with self._lock:
            if self._pacs is None:
                from cxr import dicomweb

                self._pacs = dicomweb.from_settings(self.settings)
            return self._pacs


class Thumbnails:
    """What GetThumbnail needs: the image's source, the renderer and the cache."""

    def __init__(self, settings):
        self.source = ImageSource(settings)
        self.cache = ThumbnailCache(settings.thumbnail_cache_mb * 2**20)
        self.limits = ImageLimits.of(settings)

    def cached(self, model: str, image_id: str, size: int) -> tuple[bytes, int, int] | None:
        return self.cache.get((model, image_id, size))

    def make(self, model: str, row: dict, size: int) -> tuple[bytes, int, int]:
        """Read, render and cache one thumbnail (blocking: the gateway runs it in its decode pool)."""
        item = render(self.source.read(row), size, self.limits)
        self.cache.put((model, row["image_id"], size), item)
        return item
