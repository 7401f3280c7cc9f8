"""Python client of the cxr-retrieval gateway: find archived chest X-ray studies like a text or an image.

    import cxr_client

    with cxr_client.Client("cxr.hospital.example:50051", ca="ca.pem", token=token) as client:
        for hit in client.search_text("small left pleural effusion", top_k=5).hits:
            print(hit.study_uid, hit.score)

Client (sync) and AsyncClient (asyncio) take the same arguments; see Client's docstring. Errors are
CxrError's subclasses (cxr_client.errors). The answers are the protobuf messages of
protos/cxr/retrieval/v1/retrieval.proto (cxr_client.messages).
"""

from cxr_client import messages
from cxr_client._methods import image_query, text_query
from cxr_client._version import __version__
from cxr_client.aio import AsyncClient
from cxr_client.client import Client
from cxr_client.errors import (
    Cancelled,
    ConfigurationError,
    CxrError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "AsyncClient", "Cancelled", "Client", "ConfigurationError", "CxrError", "DeadlineExceeded", "FailedPrecondition",
    "FieldViolation", "Internal", "InvalidArgument", "NotFound", "PermissionDenied", "RateLimited",
    "ResourceExhausted", "Unauthenticated", "Unavailable", "Unimplemented", "__version__", "image_query",
    "messages", "text_query",
]
