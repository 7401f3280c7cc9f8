"""The service's messages (generated from protos/cxr/retrieval/v1/retrieval.proto at build time)."""

from cxr_client._proto.retrieval_pb2 import (
    BatchSearchRequest,
    BatchSearchResponse,
    DeleteImageRequest,
    DeleteImageResponse,
    DeleteStudyRequest,
    DeleteStudyResponse,
    Filters,
    GetSearchOptionsRequest,
    GetStudyRequest,
    GetThumbnailRequest,
    Hit,
    ListModelsRequest,
    ListModelsResponse,
    ModelInfo,
    SearchByImageRequest,
    SearchByTextRequest,
    SearchOptions,
    SearchQuery,
    SearchResponse,
    Study,
    Thumbnail,
)

__all__ = [
    "BatchSearchRequest", "BatchSearchResponse", "DeleteImageRequest", "DeleteImageResponse", "DeleteStudyRequest",
    "DeleteStudyResponse", "Filters", "GetSearchOptionsRequest", "GetStudyRequest", "GetThumbnailRequest", "Hit",
    "ListModelsRequest", "ListModelsResponse", "ModelInfo", "SearchByImageRequest", "SearchByTextRequest",
    "SearchOptions", "SearchQuery", "SearchResponse", "Study", "Thumbnail",
]
