"""The requests the client builds (no server): an archived image instead of bytes, feedback, text modifiers,
a region of interest, exclusions, dates and pages."""

import pytest

from cxr_client import _methods


def test_an_image_query_takes_bytes_or_an_archived_image_s_id_and_its_refinements():
    query = _methods.image_query(image_id="00000001_000.png", with_text="effusion", roi=(0.25, 0, 0.5, 1),
                                 relevant=["a", "b"], not_relevant=["c"], top_k=5).image
    assert query.image == b"" and query.image_id == "00000001_000.png" and query.with_text == "effusion"
    assert (query.roi.x, query.roi.y, query.roi.width, query.roi.height) == (0.25, 0, 0.5, 1)
    assert list(query.feedback.relevant_image_ids) == ["a", "b"]
    assert list(query.feedback.not_relevant_image_ids) == ["c"]
    plain = _methods.image_query(b"\x89PNG").image
    assert plain.image == b"\x89PNG" and not plain.HasField("roi") and not plain.image_id


@pytest.mark.parametrize("kwargs", [{}, {"image": b"x", "image_id": "y"}])
def test_an_image_query_needs_exactly_one_source(kwargs):
    with pytest.raises(TypeError, match="one of the two"):
        _methods.image_query(**kwargs)


def test_a_text_query_carries_its_excluded_words_and_feedback():
    query = _methods.text_query("effusion", exclude_text="pacemaker", relevant=["a"]).text
    assert query.exclude_text == "pacemaker" and list(query.feedback.relevant_image_ids) == ["a"]


def test_queries_carry_their_exclusions_dates_and_page():
    image = _methods.image_query(b"DICM", exclude_same_patient=True, exclude_same_study=True,
                                 study_dates=("20240101", ""), page_token="t").image
    assert image.exclude_same_patient and image.exclude_same_study and image.page_token == "t"
    assert (image.filters.study_date_from, image.filters.study_date_to) == ("20240101", "")
    text = _methods.text_query("effusion", study_dates=("", "20241231"), page_token="u").text
    assert text.filters.study_date_to == "20241231" and text.page_token == "u"
    assert not _methods.image_query(b"x").image.exclude_same_patient
