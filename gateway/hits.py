"""Index rows as the Hits a search returns: DICOM identities, the viewer link, one hit per study.

Patient identifiers (patient_id, patient_name) are stored in the index for GetStudy but are never
copied into a hit. A caller who may not see patient data (no `studies` scope) gets hits `redact`ed:
no report, no file name, no DICOM identity or date, no viewer link, and opaque stand-ins for the
image and study ids (archives name images after patient numbers: NIH's 00000001_000.png is patient 1).
"""

from __future__ import annotations

import string

from cxr.errors import FailedPreconditionError
from cxr.retrieval.v1 import retrieval_pb2 as pb

# Row columns a hit carries under the same name; the rest are named differently or kept out.
HIT_COLUMNS = ("image_id", "study_uid", "filename", "projection", "findings", "impression", "study_instance_uid",
               "series_instance_uid", "sop_instance_uid", "accession_number", "study_date", "view_position")
VIEWER_FIELDS = ("study_instance_uid", "study_uid", "accession_number")  # what a viewer URL may name
# What a hit says of a patient beyond the image's findings labels and view: reports, file names,
# identifiers another system resolves to a patient (HIPAA counts accession numbers, UIDs and dates).
PATIENT_FIELDS = ("findings", "impression", "filename", "study_instance_uid", "series_instance_uid",
                  "sop_instance_uid", "accession_number", "study_date", "viewer_url")
GROUP_FETCH_FACTOR = 4  # images fetched per study wanted: frontal and lateral, and room for more
GROUP_MAX_FETCH = 4000


class ViewerTemplateError(FailedPreconditionError, ValueError):
    """viewer_url_template names a field a hit does not have."""


class ViewerLinks:
    """`viewer_url_template` filled in from a row; "" when a field it names is empty in that row."""

    def __init__(self, template: str):
        self.template = template
        self.fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        unknown = sorted(set(self.fields) - set(VIEWER_FIELDS))
        if unknown:
            raise ViewerTemplateError(f"viewer_url_template names {unknown}; it may use {list(VIEWER_FIELDS)}, "
                                      "e.g. https://pacs/ohif/viewer?StudyInstanceUIDs={study_instance_uid}")

    def url(self, row: dict) -> str:
        values = {name: str(row.get(name) or "") for name in self.fields}
        if not self.template or not all(values.values()):
            return ""
        return self.template.format_map(values)


def hit(rank: int, score: float, row: dict, links: ViewerLinks, image_ids: list[str] = ()) -> pb.Hit:
    return pb.Hit(rank=rank, score=score, labels=row.get("labels", []), viewer_url=links.url(row),
                  image_ids=image_ids, labels_derived=bool(row.get("labels_derived")),
                  **{name: row.get(name) or "" for name in HIT_COLUMNS})


def ranked(found: list[tuple[int, float, dict]], links: ViewerLinks) -> list[pb.Hit]:
    return [hit(rank, score, row, links) for rank, (_, score, row) in enumerate(found, 1)]


def by_study(found: list[tuple[int, float, dict]], top_k: int, links: ViewerLinks) -> list[pb.Hit]:
    """One hit per study, in the order of its best image, carrying that image's fields and the ids of
    the study's images found, best first."""
    studies: dict[str, list[tuple[float, dict]]] = {}
    for _, score, row in found:
        studies.setdefault(row.get("study_uid") or row["image_id"], []).append((score, row))
    best = list(studies.values())[:top_k]
    return [hit(rank, images[0][0], images[0][1], links, [row["image_id"] for _, row in images])
            for rank, images in enumerate(best, 1)]


def redact(hits: list[pb.Hit], opaque_id) -> list[pb.Hit]:
    """`hits` for a caller who may not see patient data; `opaque_id` is the index's (VectorStore.opaque_id)."""
    for found in hits:
        for name in PATIENT_FIELDS:
            found.ClearField(name)
        found.image_id, found.study_uid = opaque_id(found.image_id), opaque_id(found.study_uid)
        found.image_ids[:] = [opaque_id(image_id) for image_id in found.image_ids]
    return hits


def study_fetch(top_k: int, count: int) -> int:
    """How many images to fetch for `top_k` studies on a first try."""
    return min(top_k * GROUP_FETCH_FACTOR, GROUP_MAX_FETCH, max(count, 1))
