"""Which DICOM objects hold a chest image to compare (issue 19): reports, presentation states, key object
selections, raw detector data and other body parts are named; a silent header passes."""

import pydicom
import pytest

from cxr.dicom_content import FOR_PROCESSING, NOT_IMAGES, OTHER_BODY_PART, not_comparable_reason

CR = "1.2.840.10008.5.1.4.1.1.1"
# Some cases hold what real writers put in a CS value and the standard does not allow ("Tórax", "sr ").
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS")


def _dataset(**attributes) -> pydicom.Dataset:
    dataset = pydicom.Dataset()
    dataset.SOPClassUID, dataset.Modality = CR, "CR"
    for key, value in attributes.items():
        setattr(dataset, key, value)
    return dataset


@pytest.mark.parametrize("attributes, reason", [
    ({"Modality": "SR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.33"}, NOT_IMAGES["SR"]),
    ({"Modality": "PR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.1"}, NOT_IMAGES["PR"]),
    ({"Modality": "KO", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59"}, NOT_IMAGES["KO"]),
    ({"Modality": "sr "}, NOT_IMAGES["SR"]),  # case and padding as some writers leave them
    ({"Modality": "", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.22"}, NOT_IMAGES["SR"]),  # the class alone
    ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59"}, NOT_IMAGES["KO"]),
    ({"Modality": "", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.2"}, NOT_IMAGES["PR"]),
    ({"Modality": "DX", "PresentationIntentType": "FOR PROCESSING"}, FOR_PROCESSING),
    ({"Modality": "DX", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, FOR_PROCESSING),
    ({"BodyPartExamined": "KNEE"}, OTHER_BODY_PART),
    ({"BodyPartExamined": "ABDOMEN"}, OTHER_BODY_PART),
    ({"BodyPartExamined": "BREAST"}, OTHER_BODY_PART),
])
def test_what_is_no_chest_image_to_compare_is_named(attributes, reason):
    assert not_comparable_reason(_dataset(**attributes)) == reason


@pytest.mark.parametrize("attributes", [
    {},  # nothing said: passes
    {"Modality": "", "BodyPartExamined": ""},
    {"BodyPartExamined": "CHEST"},
    {"BodyPartExamined": "THORAX"},
    {"BodyPartExamined": "Chest PA"},
    {"BodyPartExamined": "PORT CHEST"},
    {"BodyPartExamined": "CHESTABDOMEN"},
    {"BodyPartExamined": "LUNG"},
    {"BodyPartExamined": "Tórax"},
    {"Modality": "DX", "PresentationIntentType": "FOR PRESENTATION", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1"},
    {"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"},  # secondary capture (the SIIM sample)
])
def test_a_chest_image_or_a_silent_header_passes(attributes):
    assert not_comparable_reason(_dataset(**attributes)) == ""


def test_the_reason_quotes_nothing_of_the_header():
    reason = not_comparable_reason(_dataset(BodyPartExamined="JANE ROE"))
    assert reason == OTHER_BODY_PART and "JANE" not in reason
