"""Which DICOM objects hold a chest image a clinician would compare: the one rule the gateway (a query
is refused) and the index builders (the instance is skipped, the reason in skipped.csv) apply, through
cxr.images.

Left out: objects that are no image (structured reports, presentation states, key object selections),
raw detector data (FOR PROCESSING, before the modality's own processing makes it readable), and
images of another body part. Lenient where the header is silent: a missing or empty Modality,
PresentationIntentType or BodyPartExamined passes.
"""

from __future__ import annotations

import re
import unicodedata

# Modality (0008,0060) of objects that are no image: what each is, for the reason.
NOT_IMAGES = {
    "SR": "a structured report (SR), not an image",
    "PR": "a presentation state (PR), not an image",
    "KO": "a key object selection document (KO), not an image",
}
# SOP Class UID prefixes of the same objects, for headers whose Modality is missing or wrong: every
# SR storage class (Key Object Selection is 1.2.840.10008.5.1.4.1.1.88.59), every presentation state.
NOT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
    "1.2.840.10008.5.1.4.1.1.88.": "SR",
    "1.2.840.10008.5.1.4.1.1.11.": "PR",
}
# Digital X-ray, mammography and intra-oral image storage - for processing.
FOR_PROCESSING_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1",
                                    "1.2.840.10008.5.1.4.1.1.1.3.1"})
FOR_PROCESSING = "raw detector data (PresentationIntentType FOR PROCESSING), not an image for presentation"
# BodyPartExamined (0018,0015) values that pass: one of these in the value, letters only, accents and
# case dropped ("CHEST", "Chest PA", "THORAX", "CHESTABDOMEN", "Tórax", "PORT CHEST", "LUNG").
CHEST_BODY_PARTS = ("CHEST", "THORA", "TORAX", "TORACE", "LUNG", "CXR", "PECHO", "POITRINE")
# The value itself is not quoted: it is the upload's text, and messages quote none of it.
OTHER_BODY_PART = "an image of another body part (BodyPartExamined is not CHEST, THORAX or the like)"


def not_comparable_reason(dataset) -> str:
    """Why the DICOM (a pydicom Dataset, or any mapping with .get) is not a chest image to compare, or ''."""
    modality = _text(dataset, "Modality")
    if modality in NOT_IMAGES:
        return NOT_IMAGES[modality]
    sop_class = _text(dataset, "SOPClassUID")
    for prefix, kind in NOT_IMAGE_CLASSES.items():
        if sop_class.startswith(prefix):
            return NOT_IMAGES[kind]
    if _text(dataset, "PresentationIntentType") == "FOR PROCESSING" or sop_class in FOR_PROCESSING_CLASSES:
        return FOR_PROCESSING
    body_part = _text(dataset, "BodyPartExamined")
    if body_part and not any(word in _letters(body_part) for word in CHEST_BODY_PARTS):
        return OTHER_BODY_PART
    return ""


def _text(dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip().upper()


def _letters(text: str) -> str:
    """A-Z only: accents dropped (Tórax -> TORAX), spaces and punctuation gone."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Z]", "", plain.upper())
