"""gateway.refine: Rocchio's formula and the text modifiers on a tiny index, and the checks of a Feedback."""

import numpy as np
import pytest

from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import refine
from gateway.request_errors import InvalidRequestError


def _ranking(index: np.ndarray, query: np.ndarray) -> list[int]:
    return list(np.argsort(-(index @ query), kind="stable"))


# Four images on the unit circle (2-d, so that the geometry can be checked by hand): the query at 0°.
INDEX = np.array([[np.cos(a), np.sin(a)] for a in np.radians([10, -20, 60, -70])], np.float32)
QUERY = np.array([1, 0], np.float32)


def test_rocchio_is_the_normalised_weighted_sum_of_the_textbook():
    moved = refine.rocchio(QUERY, INDEX[[2]], INDEX[[3]])
    expected = 1.0 * QUERY + 0.75 * INDEX[2] - 0.15 * INDEX[3]
    np.testing.assert_allclose(moved, expected / np.linalg.norm(expected), atol=1e-6)
    assert moved.dtype == np.float32 and np.linalg.norm(moved) == pytest.approx(1, abs=1e-6)


def test_marking_an_image_relevant_brings_it_and_its_side_up_the_ranking():
    assert _ranking(INDEX, QUERY) == [0, 1, 2, 3]
    assert _ranking(INDEX, refine.rocchio(QUERY, INDEX[[2]], INDEX[:0])) == [0, 2, 1, 3]
    # pushed hard away from 1 (at -20°), to 80°: the image at 60° comes first
    assert _ranking(INDEX, refine.rocchio(QUERY, INDEX[:0], INDEX[[1]], gamma=1.0)) == [2, 0, 1, 3]


def test_no_judgement_leaves_the_query_as_it_was():
    np.testing.assert_allclose(refine.rocchio(QUERY, INDEX[:0], INDEX[:0]), QUERY)


def test_words_steer_towards_or_away_and_the_result_is_normalised():
    towards = refine.steered(QUERY, INDEX[3], 0.5)
    away = refine.steered(QUERY, INDEX[3], -0.5)
    assert towards @ INDEX[3] > QUERY @ INDEX[3] > away @ INDEX[3]
    np.testing.assert_allclose([np.linalg.norm(towards), np.linalg.norm(away)], 1, atol=1e-6)


def test_feedback_ids_are_bounded_non_empty_and_one_way():
    assert refine.feedback_ids(pb.Feedback(relevant_image_ids=["a"], not_relevant_image_ids=["b"])) == (["a"], ["b"])
    for feedback, field in ((pb.Feedback(not_relevant_image_ids=["x"] * 101), refine.NOT_RELEVANT),
                            (pb.Feedback(relevant_image_ids=[""]), refine.RELEVANT),
                            (pb.Feedback(relevant_image_ids=["a"], not_relevant_image_ids=["a"]), refine.NOT_RELEVANT)):
        with pytest.raises(InvalidRequestError) as caught:
            refine.feedback_ids(feedback)
        assert caught.value.field == field and field in str(caught.value)


def test_a_modifier_is_stripped_and_bounded():
    assert refine.modifier("  with effusion ", "with_text") == "with effusion"
    with pytest.raises(InvalidRequestError) as caught:
        refine.modifier("x" * 1001, "exclude_text")
    assert caught.value.field == "exclude_text"
