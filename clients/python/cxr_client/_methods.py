"""The gateway's calls, written once for the sync and the asyncio client: each method builds its request and
hands it to `self._call(rpc, request, timeout)`, which Client answers with the response and AsyncClient with an
awaitable of it."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

from cxr_client._proto import retrieval_pb2 as pb

Image = Union[bytes, bytearray, memoryview, str, os.PathLike]


def image_bytes(image: Image) -> bytes:
    """The bytes of an image given as bytes or as the path of its file (PNG, JPEG or DICOM)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    raise TypeError(f"an image is bytes or the path of a PNG, JPEG or DICOM file, not {type(image).__name__}")


def _filters(projections: Iterable[str], labels: Iterable[str], dates: Sequence[str] = ("", "")) -> pb.Filters:
    return pb.Filters(projections=list(projections), labels=list(labels), study_date_from=dates[0],
                      study_date_to=dates[1])


def _feedback(relevant: Iterable[str], not_relevant: Iterable[str]) -> pb.Feedback:
    return pb.Feedback(relevant_image_ids=list(relevant), not_relevant_image_ids=list(not_relevant))


def text_query(text: str, *, top_k: int = 10, model: str = "", projections: Iterable[str] = (),
               labels: Iterable[str] = (), group_by_study: bool = False, exclude_text: str = "",
               relevant: Iterable[str] = (), not_relevant: Iterable[str] = (), study_dates: Sequence[str] = ("", ""),
               page_token: str = "") -> pb.SearchQuery:
    """A text query of a batch (Client.batch_search); the arguments as for search_text."""
    return pb.SearchQuery(text=pb.SearchByTextRequest(text=text, top_k=top_k, model=model,
                                                      filters=_filters(projections, labels, study_dates),
                                                      group_by_study=group_by_study, exclude_text=exclude_text,
                                                      feedback=_feedback(relevant, not_relevant),
                                                      page_token=page_token))


def image_query(image: Optional[Image] = None, *, image_id: str = "", top_k: int = 10, model: str = "",
                projections: Iterable[str] = (), labels: Iterable[str] = (), group_by_study: bool = False,
                with_text: str = "", roi: Optional[Sequence[float]] = None, relevant: Iterable[str] = (),
                not_relevant: Iterable[str] = (), exclude_same_patient: bool = False,
                exclude_same_study: bool = False, study_dates: Sequence[str] = ("", ""),
                page_token: str = "") -> pb.SearchQuery:
    """An image query of a batch (Client.batch_search); the arguments as for search_image."""
    if (image is None) == (not image_id):
        raise TypeError("give an image (bytes or a file's path) or the image_id of an archived image: one of the two")
    request = pb.SearchByImageRequest(image=b"" if image is None else image_bytes(image), image_id=image_id,
                                      top_k=top_k, model=model, filters=_filters(projections, labels, study_dates),
                                      group_by_study=group_by_study, with_text=with_text,
                                      feedback=_feedback(relevant, not_relevant),
                                      exclude_same_patient=exclude_same_patient,
                                      exclude_same_study=exclude_same_study, page_token=page_token)
    if roi is not None:
        x, y, width, height = roi
        request.roi.CopyFrom(pb.RegionOfInterest(x=x, y=y, width=width, height=height))
    return pb.SearchQuery(image=request)


class Methods:
    """The calls of the Retrieval service. Every method takes `timeout`: the call's one deadline in seconds,
    retries included (None: the client's `timeout`)."""

    def _call(self, rpc: str, request, timeout: Optional[float]):
        raise NotImplementedError

    def search_text(self, text: str, *, top_k: int = 10, model: str = "", projections: Iterable[str] = (),
                    labels: Iterable[str] = (), group_by_study: bool = False, exclude_text: str = "",
                    relevant: Iterable[str] = (), not_relevant: Iterable[str] = (),
                    study_dates: Sequence[str] = ("", ""), page_token: str = "", timeout: Optional[float] = None):
        """Studies whose images best match free text ("small left pleural effusion"): a SearchResponse, hits
        best first. `model` empty: the gateway's active model; `projections`, `labels`: keep only images of
        these; `study_dates`: (from, to) as YYYYMMDD, inclusive, "" for no bound; `group_by_study`: one hit
        per study. Refining: `exclude_text`, words to steer away from ("pacemaker"); `relevant`,
        `not_relevant`: image ids of earlier hits marked so (every mark so far). `page_token`: an answer's
        next_page_token, with the query otherwise unchanged: the next page."""
        query = text_query(text, top_k=top_k, model=model, projections=projections, labels=labels,
                           group_by_study=group_by_study, exclude_text=exclude_text, relevant=relevant,
                           not_relevant=not_relevant, study_dates=study_dates, page_token=page_token)
        return self._call("SearchByText", query.text, timeout)

    def search_image(self, image: Optional[Image] = None, *, image_id: str = "", top_k: int = 10, model: str = "",
                     projections: Iterable[str] = (), labels: Iterable[str] = (), group_by_study: bool = False,
                     with_text: str = "", roi: Optional[Sequence[float]] = None, relevant: Iterable[str] = (),
                     not_relevant: Iterable[str] = (), exclude_same_patient: bool = False,
                     exclude_same_study: bool = False, study_dates: Sequence[str] = ("", ""), page_token: str = "",
                     timeout: Optional[float] = None):
        """Studies whose images best match an image: PNG (8 or 16 bit), JPEG or DICOM, as bytes or a file's
        path, or an archived image named by `image_id` (one of the two). A SearchResponse, as search_text's,
        with `suggestions` on a calibrated index. `exclude_same_patient`, `exclude_same_study`: leave out the
        query's patient or study (a DICOM's, or the archived image's). Refining: `with_text`, words to steer
        towards ("with effusion"); `roi`, (x, y, width, height) in fractions of the image from its top left;
        `relevant`, `not_relevant`, `study_dates` and `page_token` as for search_text."""
        query = image_query(image, image_id=image_id, top_k=top_k, model=model, projections=projections,
                            labels=labels, group_by_study=group_by_study, with_text=with_text, roi=roi,
                            relevant=relevant, not_relevant=not_relevant, exclude_same_patient=exclude_same_patient,
                            exclude_same_study=exclude_same_study, study_dates=study_dates, page_token=page_token)
        return self._call("SearchByImage", query.image, timeout)

    def batch_search(self, queries: Iterable[pb.SearchQuery], *, timeout: Optional[float] = None):
        """Many queries (text_query, image_query) in one call: a BatchSearchResponse, results in query order."""
        return self._call("BatchSearch", pb.BatchSearchRequest(queries=list(queries)), timeout)

    def list_models(self, *, timeout: Optional[float] = None):
        """The models the gateway knows: a ListModelsResponse (dims, readiness, index size)."""
        return self._call("ListModels", pb.ListModelsRequest(), timeout)

    def get_study(self, study_uid: str, *, model: str = "", timeout: Optional[float] = None):
        """One study: a Study (report, image ids, DICOM identities; patient identifiers with the `studies`
        scope)."""
        return self._call("GetStudy", pb.GetStudyRequest(study_uid=study_uid, model=model), timeout)

    def thumbnail(self, image_id: str, *, size: int = 0, model: str = "", timeout: Optional[float] = None):
        """A small windowed PNG of one indexed image: a Thumbnail (`data`, `width`, `height`); `size` is its
        longer side, 32 to 512 (0: 256)."""
        return self._call("GetThumbnail", pb.GetThumbnailRequest(image_id=image_id, size=size, model=model), timeout)

    def search_options(self, *, model: str = "", timeout: Optional[float] = None):
        """What a search form offers for a model: SearchOptions (its labels, projections, whether a demo)."""
        return self._call("GetSearchOptions", pb.GetSearchOptionsRequest(model=model), timeout)

    def delete_study(self, study_uid: str, *, model: str = "", timeout: Optional[float] = None):
        """Remove every image of a study from a model's index (the `admin` scope): a DeleteStudyResponse.
        Never retried by the client: a deletion answered but lost on the way would come back NOT_FOUND."""
        return self._call("DeleteStudy", pb.DeleteStudyRequest(study_uid=study_uid, model=model), timeout)

    def delete_image(self, image_id: str, *, model: str = "", timeout: Optional[float] = None):
        """Remove one image from a model's index (the `admin` scope): a DeleteImageResponse; not retried."""
        return self._call("DeleteImage", pb.DeleteImageRequest(image_id=image_id, model=model), timeout)
