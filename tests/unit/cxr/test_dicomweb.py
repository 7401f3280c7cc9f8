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
