"""The HTTP/JSON API's routes as data: which HTTP method and path call which Retrieval RPC, and where
the request's fields come from. The handlers (gateway.http_api) and the OpenAPI document
(gateway.openapi) are both made from this table, so a route is described once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr.retrieval.v1 import retrieval_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Retrieval"]
IMAGE_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")
IMAGE_FIELD = "image"  # the request field (and multipart part) that takes the uploaded file
ARCHIVED_FIELD = "image_id"  # the parameter that names an archived image instead
SEARCH_PARAMS = (("top_k", "top_k"), ("model", "model"), ("label", "filters.labels"),
                 ("projection", "filters.projections"), ("group_by_study", "group_by_study"),
                 ("study_date_from", "filters.study_date_from"), ("study_date_to", "filters.study_date_to"),
                 ("exclude_same_patient", "exclude_same_patient"), ("exclude_same_study", "exclude_same_study"),
                 ("page_token", "page_token"))
# An image search's refinements (issue 22); repeated ones as repeated parameters, as `label` is. With
# image_id, the body may be empty (no upload).
REFINE_PARAMS = (("image_id", "image_id"), ("with_text", "with_text"), ("roi.x", "roi.x"), ("roi.y", "roi.y"),
                 ("roi.width", "roi.width"), ("roi.height", "roi.height"),
                 ("relevant_image_id", "feedback.relevant_image_ids"),
                 ("not_relevant_image_id", "feedback.not_relevant_image_ids"))


@dataclass(frozen=True)
class Endpoint:
    method: str  # GET, POST or DELETE
    path: str  # Starlette syntax; each {name} is the request field of that name
    rpc: str  # the Retrieval method it calls
    summary: str
    body: str = ""  # "json": the request message in the proto3 JSON mapping; "image": a file upload
    params: tuple[tuple[str, str], ...] = ()  # query parameter (or form field) -> request field path
    raw_response: bool = False  # the answer is the response's `data` bytes, typed by its `media_type`
    uploads: bool = False  # the body carries image bytes: it may be as large as a gRPC message

    @property
    def grpc_method(self) -> str:
        return f"/{SERVICE.full_name}/{self.rpc}"

    @property
    def path_fields(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def request_type(self):
        return SERVICE.methods_by_name[self.rpc].input_type

    @property
    def response_type(self):
        return SERVICE.methods_by_name[self.rpc].output_type


ENDPOINTS = (
    Endpoint("POST", "/v1/search/text", "SearchByText", "Studies whose images best match free text", body="json"),
    Endpoint("POST", "/v1/search/image", "SearchByImage",
             "Studies whose images best match an image (PNG, JPEG or DICOM), as the raw body or a multipart "
             "part named `image`, or an archived image named by `image_id` (no body); the other fields as "
             "query parameters or form fields",
             body="image", params=SEARCH_PARAMS + REFINE_PARAMS, uploads=True),
    Endpoint("POST", "/v1/search/batch", "BatchSearch", "Many queries in one call, answered in order", body="json",
             uploads=True),
    Endpoint("GET", "/v1/models", "ListModels", "The models the gateway knows, their readiness and index"),
    Endpoint("GET", "/v1/search/options", "GetSearchOptions", "What a search form offers for a model",
             params=(("model", "model"),)),
    Endpoint("GET", "/v1/studies/{study_uid}", "GetStudy", "One study's report, image ids and DICOM identities",
             params=(("model", "model"),)),
    Endpoint("GET", "/v1/thumbnails/{image_id}", "GetThumbnail", "A small windowed picture of one indexed image",
             params=(("model", "model"), ("size", "size")), raw_response=True),
    Endpoint("DELETE", "/v1/studies/{study_uid}", "DeleteStudy",
             "Remove every image of one study from a model's index; answered once this gateway's searches no "
             "longer return them", params=(("model", "model"),)),
    Endpoint("DELETE", "/v1/images/{image_id}", "DeleteImage",
             "Remove one image from a model's index, as DELETE /v1/studies/{study_uid} does",
             params=(("model", "model"),)),
)


def field_at(descriptor, path: str):
    """The field descriptor at a dotted path ('filters.labels') of a message descriptor."""
    *parents, name = path.split(".")
    for parent in parents:
        descriptor = descriptor.fields_by_name[parent].message_type
    return descriptor.fields_by_name[name]
