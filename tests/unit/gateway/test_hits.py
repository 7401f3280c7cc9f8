"""Rows as hits: DICOM identities, the viewer link, no patient identifiers, one hit per study."""

import pytest

from gateway import hits

ROW = {"image_id": "1.2.3.4", "study_uid": "1.2.3", "filename": "1.2.3.4.dcm", "projection": "Frontal",
       "labels": ["Effusion"], "findings": "f", "impression": "i", "study_instance_uid": "1.2.3",
       "series_instance_uid": "1.2.3.1", "sop_instance_uid": "1.2.3.4", "accession_number": "A77",
       "study_date": "20240102", "view_position": "PA", "patient_id": "P-001", "patient_name": "Doe^Jane"}


def test_a_hit_carries_the_dicom_identities_and_no_patient_identifier():
    links = hits.ViewerLinks("https://pacs.example/ohif/viewer?StudyInstanceUIDs={study_instance_uid}")
    hit = hits.hit(1, 0.5, ROW, links)
    assert (hit.study_instance_uid, hit.series_instance_uid, hit.sop_instance_uid) == ("1.2.3", "1.2.3.1", "1.2.3.4")
    assert (hit.accession_number, hit.study_date, hit.view_position) == ("A77", "20240102", "PA")
    assert hit.viewer_url == "https://pacs.example/ohif/viewer?StudyInstanceUIDs=1.2.3"
    assert "P-001" not in str(hit) and "Doe" not in str(hit)


def test_no_viewer_link_when_the_row_lacks_what_the_template_names():
    links = hits.ViewerLinks("https://pacs/viewer?accession={accession_number}")
    assert hits.hit(1, 0.5, dict(ROW, accession_number=""), links).viewer_url == ""
    assert hits.hit(1, 0.5, ROW, hits.ViewerLinks("")).viewer_url == ""


def test_a_template_naming_an_unknown_field_is_refused_with_the_known_ones():
    with pytest.raises(hits.ViewerTemplateError, match="study_instance_uid"):
        hits.ViewerLinks("https://pacs/viewer?patient={patient_id}")


def _found(*items):
    return [(i, score, {"image_id": image, "study_uid": study}) for i, (image, study, score) in enumerate(items)]


def test_by_study_keeps_each_study_once_at_its_best_image():
    found = _found(("a-lat", "A", 0.9), ("b-pa", "B", 0.8), ("a-pa", "A", 0.7), ("c-pa", "C", 0.6))
    grouped = hits.by_study(found, 2, hits.ViewerLinks(""))
    assert [(h.rank, h.study_uid, h.image_id, round(h.score, 2)) for h in grouped] == [
        (1, "A", "a-lat", 0.9), (2, "B", "b-pa", 0.8)]
    assert list(grouped[0].image_ids) == ["a-lat", "a-pa"]


def test_study_fetch_asks_for_more_images_than_studies_within_bounds():
    assert hits.study_fetch(10, 1_000_000) == 10 * hits.GROUP_FETCH_FACTOR
    assert hits.study_fetch(1000, 1_000_000) == hits.GROUP_MAX_FETCH
    assert hits.study_fetch(10, 7) == 7


def test_a_redacted_hit_says_nothing_of_the_patient_and_keeps_what_is_searched_for():
    found = [hits.hit(1, 0.5, ROW, hits.ViewerLinks("https://pacs/v?uid={study_instance_uid}"), ["1.2.3.4", "1.2.3.5"])]
    (hit,) = hits.redact(found, lambda value: f"opaque({value})")
    assert hit.image_id == "opaque(1.2.3.4)" and hit.study_uid == "opaque(1.2.3)"
    assert list(hit.image_ids) == ["opaque(1.2.3.4)", "opaque(1.2.3.5)"]
    assert all(not getattr(hit, name) for name in hits.PATIENT_FIELDS)
    assert (hit.projection, list(hit.labels), hit.view_position, hit.score) == ("Frontal", ["Effusion"], "PA", 0.5)
