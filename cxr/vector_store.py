"""The vector store: one model's image vectors and their metadata, searched by inner product.

Two implementations share this interface: `faiss` (cxr.faiss_store: files under index_dir, embedded
in the gateway) and `milvus` (cxr.milvus_store: a Milvus Lite file or a Milvus cluster). The gateway
and the builders see only this interface; `open_store` picks by the `index_backend` setting.

Ids are row positions 0..count-1 in build order, the same in every backend.

Every build keeps a secret in its manifest (`id_key`, carried over from the build it replaces) from
which a store derives opaque stand-ins for image and study ids (`opaque_id`): what callers who may not
see patient data get instead of ids that archives derive from file names or patient numbers.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from cxr.errors import CxrError
from cxr.image_table import UnknownFilterError  # noqa: F401 - part of this interface

Hits = list[tuple[int, float]]  # (id, score), best first
ID_KEY = "id_key"  # the manifest's secret for opaque ids
OPAQUE_ID_HEX = 24  # 96 bits: no collision among billions of images
log = logging.getLogger("cxr.vector_store")


def id_key_for(previous_manifest: dict | None) -> str:
    """A new build's id key: the one of the build it replaces, so opaque ids stay the same, else a new one."""
    return (previous_manifest or {}).get(ID_KEY) or secrets.token_hex(32)


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


@dataclass(frozen=True)
class Filter:
    """Projection and label filters of one query: any of the projections, and any of the labels.
    Values match regardless of case; they are kept as sent, so an error can quote them."""

    projections: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, projections=(), labels=()) -> Filter:
        """Order and repeats do not change a filter's meaning, so they do not change its key."""
        return cls(tuple(sorted(set(projections))), tuple(sorted(set(labels))))

    def __bool__(self) -> bool:
        return bool(self.projections or self.labels)


class VectorStore(ABC):
    """One model's index, ready to search. `search` blocks: the gateway calls it from a worker thread."""

    manifest: dict  # model, export_sha256, dim, count, index_type, created, source, ...

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def index_type(self) -> str:
        return str(self.manifest.get("index_type", ""))

    @property
    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the index takes where it is stored."""

    @abstractmethod
    def check_filter(self, flt: Filter) -> None:
        """Raise UnknownFilterError, naming the known values, for a value no image carries."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, flt: Filter = Filter()) -> list[Hits]:
        """For each query (float32 [n, dim], L2-normalised), its top k among the images passing `flt`."""

    @abstractmethod
    def rows(self, ids: list[int]) -> list[dict]:
        """The metadata of these ids (image_id, study_uid, filename, projection, labels, report fields)."""

    @abstractmethod
    def study(self, study_uid: str) -> list[dict]:
        """The metadata of every image of one study (empty when it is not indexed)."""

    @abstractmethod
    def image(self, image_id: str) -> dict | None:
        """One image's metadata (None when it is not indexed)."""

    @property
    @abstractmethod
    def labels(self) -> list[str]:
        """The finding labels images of this index carry: the label filter's values."""

    @property
    @abstractmethod
    def projections(self) -> list[str]:
        """The projections of this index: the projection filter's values."""

    @property
    def inline_search(self) -> bool:
        """Whether one search costs less than handing it to a worker thread (a few hundred microseconds
        on a busy host): then the gateway runs it where it is asked."""
        return False

    def ready(self) -> bool:
        """Whether the store answers now: the gateway's health says NOT_SERVING while it does not."""
        return True

    def opaque_id(self, value: str) -> str:
        """A stand-in for an image or study id, the same for every query of this index and its rebuilds,
        that reveals nothing of the id without the index's key ("" stays "")."""
        if not value:
            return ""
        return hmac.new(self._id_key, value.encode(), hashlib.sha256).hexdigest()[:OPAQUE_ID_HEX]

    @functools.cached_property
    def _id_key(self) -> bytes:
        key = self.manifest.get(ID_KEY)
        if key:
            return bytes.fromhex(key)
        log.warning("this index was built before opaque ids: each gateway makes up its own until it is rebuilt")
        return secrets.token_bytes(32)

    def close(self) -> None:
        """Release what the store holds (connections, mapped files)."""


def check_model(where: str, manifest: dict, model: str | None, dim: int | None, export_sha256: str | None) -> None:
    """Refuse an index built by another model, dimension or export, saying how to rebuild it."""
    rebuild = f"rebuild it with `cxr index build --model {model or '<model>'} ...`"
    if (model and manifest.get("model") != model) or (dim and manifest.get("dim") != dim):
        raise IndexMismatchError(f"index {where} was built with {manifest.get('model')} ({manifest.get('dim')}-d); "
                                 f"the gateway serves {model} ({dim}-d): {rebuild}")
    built_with = manifest.get("export_sha256")
    if export_sha256 and built_with != export_sha256:
        raise IndexMismatchError(
            f"index {where} was built with another export of {model} (image tower sha256 {str(built_with)[:12]}…); "
            f"the export served now is sha256 {export_sha256[:12]}…: {rebuild}")


def top_hits(scores: np.ndarray, ids: np.ndarray) -> list[Hits]:
    """FAISS-style result arrays as hit lists, without the -1 padding of short results."""
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)]


def backend(settings):
    """The store the settings name: FAISS files under index_dir, or Milvus at milvus_uri."""
    if settings.index_backend == "milvus":
        from cxr.milvus_store import MilvusBackend  # pymilvus is needed only by those who use it

        return MilvusBackend(settings.milvus_uri, settings.milvus_token)
    from cxr.faiss_store import FaissBackend

    return FaissBackend(settings.index_dir, settings.use_gpu, copy_dir=settings.index_copy_dir)
