"""cxr.dicomweb without a PACS: a bad query says what to give, the projection comes from the DICOM headers,
URLs are shown without their credentials (against a real Orthanc: tests/integration/cxr/test_dicomweb.py)."""

import pytest
from pydicom.dataset import Dataset

from cxr import dicomweb


def test_a_bad_since_or_limit_says_what_to_give():
    with pytest.raises(dicomweb.DicomWebError, match="YYYYMMDD"):
        dicomweb.Query.parse(since="2024-01-01")
    with pytest.raises(dicomweb.DicomWebError, match="--limit"):
        dicomweb.Query.parse(limit=-1)


@pytest.mark.parametrize("tags, projection", [
    ({"ViewPosition": "PA"}, "Frontal"), ({"ViewPosition": "AP"}, "Frontal"), ({"ViewPosition": "LL"}, "Lateral"),
    ({"ViewPosition": "RL"}, "Lateral"), ({"ViewPosition": "LATERAL"}, "Lateral"),
    ({"ViewCodeSequence": "postero-anterior"}, "Frontal"), ({"ViewCodeSequence": "left lateral"}, "Lateral"),
    ({"SeriesDescription": "CHEST LAT"}, "Lateral"), ({"SeriesDescription": "view: PA"}, "Frontal"),
    ({"ProtocolName": "Thorax AP portable"}, "Frontal"), ({"SeriesDescription": "PA and LAT"}, ""),
    ({"ViewPosition": "", "SeriesDescription": "chest"}, ""), ({}, ""),
])
def test_projection_from_view_position_else_view_code_else_description(tags, projection):
    dataset = Dataset()
    for name, value in tags.items():
        if name == "ViewCodeSequence":
            code = Dataset()
            code.CodeMeaning = value
            dataset.ViewCodeSequence = [code]
        else:
            setattr(dataset, name, value)
    assert dicomweb.projection(dataset) == projection


def test_redacted_drops_credentials():
    assert dicomweb.redacted("https://u:p@pacs.example:8443/dicom-web?x=1") == "https://pacs.example:8443/dicom-web"


class Qido:
    """dicomweb-client's root-level instance search over `sops`: answers at most `cap` results, and
    ignores the offset when told; records each search's filters."""

    def __init__(self, sops, cap=1000, ignores_offset=False, ignores_filters=False):
        self.sops, self.cap, self.ignores_offset, self.ignores_filters = sops, cap, ignores_offset, ignores_filters
        self.searches = []

    def search_for_instances(self, limit=None, offset=0, search_filters=None, **kwargs):
        self.searches.append(dict(search_filters or {}))
        found = [s for s in self.sops if self.ignores_filters or (search_filters or {}).get("SOPInstanceUID", s) == s]
        start = 0 if self.ignores_offset else offset
        return [{"0020000D": {"Value": ["1.2"]}, "0020000E": {"Value": ["1.2.1"]}, "00080018": {"Value": [s]}}
                for s in found[start:start + min(limit or self.cap, self.cap)]]


def _pacs(qido):
    pacs = dicomweb.DicomWeb("http://pacs/dicom-web", session=None)
    pacs._client = qido
    return pacs


def test_a_whole_listing_pages_on_past_a_server_that_caps_answers_and_stops_when_offset_is_ignored():
    sops = [f"1.2.1.{n}" for n in range(7)]
    capped = Qido(sops, cap=3)
    pages = list(_pacs(capped).instance_pages(dicomweb.Query.parse("DX,CR", since="20240101"), page=5))
    assert [len(p) for p in pages] == [3, 3, 1, 3, 3, 1]  # each modality, to the end; none stopped short
    assert {i.sop_uid for p in pages for i in p} == set(sops)
    assert pages[0][0] == dicomweb.Instance("1.2", "1.2.1", "1.2.1.0")
    assert capped.searches[0] == {"StudyDate": "20240101-", "Modality": "DX"} and len(capped.searches) == 8
    stuck = Qido(sops, ignores_offset=True)
    assert [len(p) for p in _pacs(stuck).instance_pages(page=5)] == [5] and len(stuck.searches) == 2


def test_has_instance_checks_the_uid_even_where_the_server_ignores_the_filter():
    instance = dicomweb.Instance("1.2", "1.2.1", "1.2.1.9")
    assert _pacs(Qido(["1.2.1.9"])).has_instance(instance)
    assert not _pacs(Qido(["1.2.1.0"], ignores_filters=True)).has_instance(instance)
