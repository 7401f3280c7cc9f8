"""The repository's own client of the gateway, for its tests, benchmarks and demo: TLS (and a client
certificate for mutual TLS), a bearer token (over plaintext too: the red-team tests send one on purpose), a
deadline per attempt, retries with backoff while the gateway is UNAVAILABLE, and waits as long as the gateway
asks when it throttles (RESOURCE_EXHAUSTED with the deprecated `retry-after-ms` trailer).

Applications, and `cxr search`, use the client package instead (clients/python, `cxr_client`): grpcio and
protobuf only, TLS by default, gRPC's retry policy within one deadline per call, typed errors.

    from cxr.client import RetrievalClient

    with RetrievalClient("cxr.hospital.example:50051", ca="ca.pem", token=token) as client:
        for hit in client.search_text("small left pleural effusion", top_k=5).hits:
            print(hit.study_uid, hit.score)

`RetrievalClient.from_settings(settings)` takes the address and the client settings (`ca`,
`client_cert`, `client_key`, `token`: CXR_CA, CXR_CLIENT_CERT, CXR_CLIENT_KEY, CXR_TOKEN).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxr.metadata_keys import REQUEST_ID_KEY, RETRY_AFTER_KEY
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 << 20  # a full-size DICOM
RETRY_BACKOFF_S = (0.1, 0.3, 1.0, 3.0)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                             "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call on the channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def channel(address: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
            token: str = "") -> grpc.Channel:
    """A channel to the gateway: TLS when `ca` is given (mutual TLS with `cert` and `key`), else
    plaintext; with `token`, every call carries it."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if ca is None:
        made = grpc.insecure_channel(address, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes(), Path(key).read_bytes() if key else None,
                                                   Path(cert).read_bytes() if cert else None)
        made = grpc.secure_channel(address, credentials, options=options)
    return grpc.intercept_channel(made, _BearerToken(token)) if token else made


def channel_from(settings) -> grpc.Channel:
    """A channel to the gateway of `settings`, with its client files and token."""
    return channel(settings.gateway_address, settings.ca, settings.client_cert, settings.client_key, settings.token)


def health(address: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
           timeout: float = 2.0) -> int | None:
    """The gateway's health status (health_pb2 enum), or None when it does not answer."""
    with channel(address, ca, cert, key) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


def _throttle_wait(error: grpc.RpcError) -> float | None:
    """The seconds a rate-limited call is told to wait, or None when `error` is no such refusal."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    hint = dict(error.trailing_metadata() or ()).get(RETRY_AFTER_KEY, "")
    return int(hint) / 1000 if hint.isdigit() else None


class RetrievalClient:
    def __init__(self, address: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                 token: str = "", deadline_s: float = 60.0, retries: int = 3):
        self.address = address
        self.deadline_s = deadline_s
        self.retries = retries
        self._channel = channel(address, ca, cert, key, token)
        self.stub = pb_grpc.RetrievalStub(self._channel)
        self.last_request_id = ""  # the gateway's id of the last answered call: quote it when reporting a problem

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "RetrievalClient":
        return cls(settings.gateway_address, settings.ca, settings.client_cert, settings.client_key, settings.token,
                   **kwargs)

    def _call(self, method: Callable, request):
        """`method(request)` with the deadline and token. UNAVAILABLE is retried with backoff,
        `retries` times; a rate-limit refusal is retried after the wait the gateway names, for at
        most `deadline_s` of waiting in all."""
        attempt, throttled_s = 0, 0.0
        while True:
            try:
                response, call = method.with_call(request, timeout=self.deadline_s)
                self.last_request_id = dict(call.trailing_metadata() or ()).get(REQUEST_ID_KEY, "")
                return response
            except grpc.RpcError as error:
                wait = _throttle_wait(error)
                if wait is not None and throttled_s + wait <= self.deadline_s:
                    throttled_s += wait
                elif error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    wait = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                    attempt += 1
                else:
                    raise
                time.sleep(wait)

    def search_text(self, text: str, top_k: int = 10, model: str = "", projections=(), labels=(),
                    group_by_study: bool = False) -> pb.SearchResponse:
        return self._call(self.stub.SearchByText, pb.SearchByTextRequest(
            text=text, top_k=top_k, model=model, filters=pb.Filters(projections=projections, labels=labels),
            group_by_study=group_by_study))

    def search_image(self, image: bytes, top_k: int = 10, model: str = "", projections=(), labels=(),
                     group_by_study: bool = False) -> pb.SearchResponse:
        return self._call(self.stub.SearchByImage, pb.SearchByImageRequest(
            image=image, top_k=top_k, model=model, filters=pb.Filters(projections=projections, labels=labels),
            group_by_study=group_by_study))

    def batch_search(self, queries: list[pb.SearchQuery]) -> pb.BatchSearchResponse:
        return self._call(self.stub.BatchSearch, pb.BatchSearchRequest(queries=queries))

    def get_study(self, study_uid: str, model: str = "") -> pb.Study:
        return self._call(self.stub.GetStudy, pb.GetStudyRequest(study_uid=study_uid, model=model))

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest())

    def thumbnail(self, image_id: str, size: int = 0, model: str = "") -> pb.Thumbnail:
        return self._call(self.stub.GetThumbnail, pb.GetThumbnailRequest(image_id=image_id, size=size, model=model))

    def search_options(self, model: str = "") -> pb.SearchOptions:
        return self._call(self.stub.GetSearchOptions, pb.GetSearchOptionsRequest(model=model))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
