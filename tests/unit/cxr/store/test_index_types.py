"""The sizes of the index types (cxr.store.index_types): a type that learns from the archive refuses one too small
to learn from, before FAISS would stop on it with a bare RuntimeError (the refusal is shown to hold against the
real FAISS writer: one image fewer fails there, as many passes)."""

import pytest

from cxr.store import index_types
from cxr.store.errors import TooFewToTrainError
from cxr.store.faiss_backend import FaissBackend
from support import index_metadata, unit_vectors


@pytest.mark.parametrize("index_type", sorted(index_types.MIN_IMAGES))
def test_too_few_images_to_train_on_are_refused_with_the_remedy(index_type):
    needed = index_types.MIN_IMAGES[index_type]
    index_types.check_count(index_type, needed)
    with pytest.raises(TooFewToTrainError, match=f"needs at least {needed} images, not {needed - 1}: use flat"):
        index_types.check_count(index_type, needed - 1)


@pytest.mark.parametrize("index_type", sorted(index_types.MIN_IMAGES))
def test_the_minimum_is_what_faiss_needs(index_type, tmp_path):
    needed = index_types.MIN_IMAGES[index_type]
    for count, trains in ((needed, True), (needed - 1, False)):
        vectors = unit_vectors(count, dim=32)
        backend = FaissBackend(tmp_path, folder=tmp_path / f"{index_type}-{count}")
        write = lambda: backend.write("m", vectors, index_metadata(count), {"model": "m", "dim": 32}, [],  # noqa: E731
                                      index_type)
        if trains:
            assert write()["count"] == count
        else:
            with pytest.raises(RuntimeError, match="training points"):
                write()


def test_types_that_learn_nothing_take_any_archive():
    for index_type in set(index_types.INDEX_TYPES) - set(index_types.MIN_IMAGES):
        index_types.check_count(index_type, 1)
