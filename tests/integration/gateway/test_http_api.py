"""The HTTP/JSON API against a real gateway and a real Triton over loopback: every answer is the
gRPC answer in JSON, every error the mapped status, and the HTTP client is who the audit trail
and the rate limit see."""

import base64
import json
import re
import socket
import ssl
import time
from dataclasses import replace

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from cxr import dev_pki
from cxr.client import channel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import calls, openapi
from support import DATA_DIR, BackgroundGateway
from support.dicom_query import PATIENT, patients, query_dicom

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"  # the model of the session's nih_index
SAMPLES = DATA_DIR / "cxr_samples"
PNG = SAMPLES / "00000001_000.png"
DICOM = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
ISSUER, AUDIENCE = "cxr-dev", "cxr-retrieval"


@pytest.fixture
def http(web):
    with httpx.Client(base_url=web.http_url, timeout=60) as client:
        yield client


@pytest.fixture
def stub(web):
    with grpc.insecure_channel(web.address) as ch:
        yield pb_grpc.RetrievalStub(ch)


def _as_json(message) -> dict:
    return json_format.MessageToDict(message)


def _without_scores(answer: dict) -> dict:
    return {key: [{**hit, "score": None} for hit in value] if key == "hits"
            else [_without_scores(result) for result in value] if key == "results" else value
            for key, value in answer.items()}


def _scores(answer: dict) -> list[float]:
    return [hit.get("score", 0.0) for result in answer.get("results", [answer]) for hit in result.get("hits", [])]


def _same_answer(got: dict, expected: dict) -> None:
    """Equal, scores to float32 precision (each side ran its own search)."""
    assert _without_scores(got) == _without_scores(expected)
    assert _scores(got) == pytest.approx(_scores(expected), abs=1e-6)


def _still_answers(http) -> None:
    answer = http.post("/v1/search/text", json={"text": "cardiomegaly", "topK": 2})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 2


@pytest.mark.parametrize("body", [
    {"text": "small left pleural effusion", "topK": 7},
    {"text": "enlarged heart", "top_k": 20, "filters": {"labels": ["Cardiomegaly"], "projections": ["Frontal"]}},
    {"text": "mass", "topK": 5, "groupByStudy": True},
])
def test_text_search_answers_what_grpc_answers(http, stub, body):
    answer = http.post("/v1/search/text", json=body)
    assert answer.status_code == 200, answer.text
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    assert answer.headers["cache-control"] == "no-store"
    _same_answer(answer.json(), _as_json(stub.SearchByText(json_format.ParseDict(body, pb.SearchByTextRequest()))))


@pytest.mark.parametrize("path, kind", [(PNG, "image/png"), (DICOM, "application/dicom")])
def test_image_search_raw_and_multipart_answer_what_grpc_answers(http, stub, path, kind):
    data = path.read_bytes()
    expected = _as_json(stub.SearchByImage(pb.SearchByImageRequest(
        image=data, top_k=6, filters=pb.Filters(labels=["Effusion", "Mass"]))))
    raw = http.post("/v1/search/image", params=[("top_k", "6"), ("label", "Effusion"), ("label", "Mass")],
                    content=data, headers={"content-type": kind})
    form = http.post("/v1/search/image", files={"image": (path.name, data, kind)},
                     data={"top_k": "6", "label": ["Effusion", "Mass"], "model": "", "group_by_study": "false"})
    for answer in (raw, form):
        assert answer.status_code == 200, answer.text
        _same_answer(answer.json(), expected)


def test_refined_searches_answer_what_grpc_answers(http, stub):
    """An archived image with no body, its refinements as parameters; a text query's in its JSON."""
    feedback = pb.Feedback(relevant_image_ids=["00000003_001.png"], not_relevant_image_ids=["00000001_000.png"])
    roi = pb.RegionOfInterest(x=0.25, y=0, width=0.5, height=1)
    expected = _as_json(stub.SearchByImage(pb.SearchByImageRequest(
        image_id="00000013_005.png", top_k=6, with_text="effusion", feedback=feedback)))
    archived = http.post("/v1/search/image", params=[
        ("image_id", "00000013_005.png"), ("top_k", "6"), ("with_text", "effusion"),
        ("relevant_image_id", "00000003_001.png"), ("not_relevant_image_id", "00000001_000.png")])
    assert archived.status_code == 200, archived.text
    _same_answer(archived.json(), expected)
    data = PNG.read_bytes()
    expected = _as_json(stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=6, roi=roi)))
    cropped = http.post("/v1/search/image", params=[("top_k", "6"), ("roi.x", "0.25"), ("roi.y", "0"),
                                                    ("roi.width", "0.5"), ("roi.height", "1")],
                        content=data, headers={"content-type": "image/png"})
    assert cropped.status_code == 200, cropped.text
    _same_answer(cropped.json(), expected)
    request = pb.SearchByTextRequest(text="effusion", top_k=5, exclude_text="pacemaker", feedback=feedback)
    text = http.post("/v1/search/text", json=_as_json(request))
    assert text.status_code == 200, text.text
    _same_answer(text.json(), _as_json(stub.SearchByText(request)))
    missing = http.post("/v1/search/image", params={"image_id": "absent.png"})
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


def test_exclusion_dates_and_pages_of_an_upload_answer_what_grpc_answers(http, stub):
    dicom = query_dicom()
    request = pb.SearchByImageRequest(image=dicom, top_k=4, exclude_same_patient=True,
                                      filters=pb.Filters(study_date_to="20991231"))
    params = {"top_k": "4", "exclude_same_patient": "true", "study_date_to": "20991231"}
    assert http.post("/v1/search/image", params=params, content=dicom,
                     headers={"content-type": "application/dicom"}).json() == {"model": MODEL}  # NIH rows: no date
    request.filters.ClearField("study_date_to")
    del params["study_date_to"]
    first = stub.SearchByImage(request, timeout=60)
    request.page_token = first.next_page_token
    expected = _as_json(stub.SearchByImage(request, timeout=60))
    answer = http.post("/v1/search/image", params={**params, "page_token": first.next_page_token}, content=dicom,
                       headers={"content-type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    _same_answer(answer.json(), expected)
    assert expected["nextPageToken"] and not {hit["imageId"] for hit in expected["hits"]} & \
        {image for image, patient in patients().items() if patient == PATIENT}
    refused = http.post("/v1/search/image", params={"exclude_same_patient": "true"}, content=PNG.read_bytes(),
                        headers={"content-type": "image/png"})
    assert refused.status_code == 400 and "exclude_same_patient" in refused.text


def test_batch_search_answers_what_grpc_answers(http, stub):
    body = {"queries": [{"text": {"text": "pneumothorax", "topK": 3}},
                        {"image": {"image": base64.b64encode(PNG.read_bytes()).decode(), "topK": 4}}]}
    answer = http.post("/v1/search/batch", json=body)
    assert answer.status_code == 200, answer.text
    _same_answer(answer.json(), _as_json(stub.BatchSearch(json_format.ParseDict(body, pb.BatchSearchRequest()))))


def test_models_options_study_and_thumbnail_are_the_grpc_answers(http, stub):
    assert http.get("/v1/models").json() == _as_json(stub.ListModels(pb.ListModelsRequest()))
    assert http.get("/v1/search/options", params={"model": MODEL}).json() == _as_json(
        stub.GetSearchOptions(pb.GetSearchOptionsRequest(model=MODEL)))
    hit = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=1)).hits[0]
    study = http.get(f"/v1/studies/{hit.study_uid}")
    assert study.status_code == 200 and study.json() == _as_json(stub.GetStudy(pb.GetStudyRequest(
        study_uid=hit.study_uid)))
    picture = http.get(f"/v1/thumbnails/{hit.image_id}", params={"model": MODEL, "size": "64"})
    expected = stub.GetThumbnail(pb.GetThumbnailRequest(image_id=hit.image_id, model=MODEL, size=64))
    assert picture.status_code == 200 and picture.content == expected.data
    assert picture.headers["content-type"] == expected.media_type == "image/png"
    assert picture.headers["cache-control"] == "private, max-age=3600"


ERRORS = {
    "empty text": (dict(method="POST", url="/v1/search/text", json={"text": "  "}), 400, "INVALID_ARGUMENT", "empty"),
    "unknown model": (dict(method="POST", url="/v1/search/text", json={"text": "x", "model": "nope"}), 404,
                      "NOT_FOUND", "not in the registry"),
    "top_k too large": (dict(method="POST", url="/v1/search/text", json={"text": "x", "topK": 5000}), 400,
                        "INVALID_ARGUMENT", "top_k"),
    "malformed JSON": (dict(method="POST", url="/v1/search/text", content=b'{"text": "x"',
                            headers={"content-type": "application/json"}), 400, "INVALID_ARGUMENT", "not valid JSON"),
    "unknown field": (dict(method="POST", url="/v1/search/text", json={"txt": "x"}), 400, "INVALID_ARGUMENT",
                      "no field named 'txt'"),
    "not JSON": (dict(method="POST", url="/v1/search/text", content=b"text=x",
                      headers={"content-type": "application/x-www-form-urlencoded"}), 415, "UNSUPPORTED_MEDIA_TYPE",
                 "application/json"),
    "not an image": (dict(method="POST", url="/v1/search/image", content=b"GIF89a....",
                          headers={"content-type": "image/png"}), 400, "INVALID_ARGUMENT", "image"),
    "bad parameter": (dict(method="POST", url="/v1/search/image?top_k=ten", content=PNG.read_bytes(),
                           headers={"content-type": "image/png"}), 400, "INVALID_ARGUMENT", "top_k must be an integer"),
    "unknown parameter": (dict(method="GET", url="/v1/search/options?modle=x"), 400, "INVALID_ARGUMENT", "modle"),
    "form without image": (dict(method="POST", url="/v1/search/image", data={"top_k": "3"},
                                files={"other": ("a.png", b"x", "image/png")}), 400, "INVALID_ARGUMENT", "image"),
    "unknown study": (dict(method="GET", url="/v1/studies/no-such-study"), 404, "NOT_FOUND", "study_uid"),
    "unknown route": (dict(method="GET", url="/v1/searches"), 404, "NOT_FOUND", ""),
    "wrong method": (dict(method="GET", url="/v1/search/text"), 405, "METHOD_NOT_ALLOWED", ""),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_map_to_http_statuses_and_the_server_keeps_answering(http, case):
    request, status, name, words = ERRORS[case]
    answer = http.request(**request)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == status and error["status"] == name and words in error["message"], error
    assert answer.headers["cache-control"] == "no-store"
    if "requestId" in error:
        assert answer.headers["x-request-id"] == error["requestId"]
    if status == 405:
        assert answer.headers["allow"] == "POST"
    _still_answers(http)


def _raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_body_over_the_message_limit_gets_413_unread(web, http):
    head = (b"POST /v1/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 200000000\r\n\r\n")
    answer = _raw_request(web.http_url, head)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"status":"REQUEST_ENTITY_TOO_LARGE"' in answer
    _still_answers(http)


def test_health_security_headers_and_the_search_page(http):
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "SERVING"}
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for answer in (health, page, http.get("/v1/models")):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert "public" not in answer.headers.get("cache-control", "")


def test_without_auth_only_loopback_names_are_answered(http):
    answer = http.get("/v1/models", headers={"host": "rebound.example.com"})
    assert answer.status_code == 421 and "localhost" in answer.json()["error"]["message"]
    assert http.get("/v1/models", headers={"host": "localhost"}).status_code == 200


def test_openapi_document_is_served_and_every_ref_resolves(http):
    document = http.get("/v1/openapi.json").json()
    assert document == openapi.document()
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document))
    assert refs and set(refs) <= set(document["components"]["schemas"])


# --- the rate limit sees the HTTP client ---------------------------------------------------------

@pytest.fixture(scope="module")
def limited(served, nih_index):
    background = BackgroundGateway(replace(served, model=MODEL, rate_limit_per_s=0.05, rate_limit_burst=2), http=True)
    try:
        yield background
    finally:
        background.stop()


def test_a_rate_limited_http_client_gets_429_and_a_grpc_client_cannot_claim_another_address(limited):
    with httpx.Client(base_url=limited.http_url, timeout=30) as http:
        assert [http.get("/v1/models").status_code for _ in range(2)] == [200, 200]
        refused = http.get("/v1/models")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED" and refused.headers["x-request-id"]
    spoofed = ((calls.FORWARDED_PEER_KEY, "ipv4:10.9.9.9:1"),)
    with grpc.insecure_channel(limited.address) as ch:
        with pytest.raises(grpc.RpcError) as error:
            pb_grpc.RetrievalStub(ch).ListModels(pb.ListModelsRequest(), metadata=spoofed, timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the same loopback client's bucket


# --- TLS, tokens and the audit trail -------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(served, nih_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("http-secured")
    pki = root / "pki"
    dev_pki.write_dev_pki(pki)
    settings = replace(served, model=MODEL, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                       tls_client_ca=pki / "ca.pem", auth="token", jwt_jwks=str(pki / "jwks.json"),
                       jwt_issuer=ISSUER, jwt_audience=AUDIENCE, audit_log=root / "audit.log", rate_limit_per_s=0)
    background = BackgroundGateway(settings, http=True)
    try:
        yield background, settings, pki
    finally:
        background.stop()


def _token(pki, subject="dr.http", scopes=("search", "studies", "admin")) -> str:
    key = serialization.load_pem_private_key((pki / "signing.key").read_bytes(), None)
    now = int(time.time())
    claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
              "scope": " ".join(scopes)}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": dev_pki.SIGNING_KEY_ID})


def _https(background, pki, client_cert=True) -> httpx.Client:
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if client_cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return httpx.Client(base_url=background.http_url.replace("127.0.0.1", "localhost"), verify=context, timeout=60)


def _audit_line(settings, request_id: str) -> dict:
    lines = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    return next(line for line in lines if line["request_id"] == request_id)


def test_https_with_a_token_is_audited_with_the_http_clients_identity(secured):
    background, settings, pki = secured
    text = "effusion in patient Jane Roe"
    with _https(background, pki) as http:
        answer = http.post("/v1/search/text", json={"text": text, "topK": 3},
                           headers={"authorization": f"Bearer {_token(pki)}"})
    assert answer.status_code == 200, answer.text
    line = _audit_line(settings, answer.headers["x-request-id"])
    assert line["principal"] == "dr.http" and line["method"] == "SearchByText" and line["status"] == "OK"
    assert line["client_cert"].startswith("CN=cxr-dev-client")
    assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", line["peer"]), line["peer"]
    assert "Jane" not in settings.audit_log.read_text()


@pytest.mark.parametrize("token, url, status, name", [
    (None, "/v1/models", 401, "UNAUTHENTICATED"),
    ("let-me-in", "/v1/search/options", 401, "UNAUTHENTICATED"),
    (lambda pki: _token(pki, scopes=["search"]), "/v1/studies/00000002_000", 403, "PERMISSION_DENIED"),
])
def test_credentials_are_checked_as_for_grpc(secured, token, url, status, name):
    background, _, pki = secured
    token = token(pki) if callable(token) else token
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with _https(background, pki) as http:
        answer = http.get(url, headers=headers)
        assert answer.status_code == status and answer.json()["error"]["status"] == name, answer.text
        assert (answer.headers.get("www-authenticate") == "Bearer") == (status == 401)
        assert http.get("/healthz").json() == {"status": "SERVING"}  # health stays open


def test_plaintext_and_certificate_less_https_are_refused(secured):
    background, _, pki = secured
    with httpx.Client(base_url=background.http_url.replace("https", "http"), timeout=10) as plain:
        with pytest.raises(httpx.TransportError):
            plain.get("/healthz")
    with _https(background, pki, client_cert=False) as anonymous:
        with pytest.raises(httpx.TransportError):
            anonymous.get("/healthz")


def test_a_grpc_client_cannot_claim_another_peer_or_certificate(secured):
    background, settings, pki = secured
    metadata = (("authorization", f"Bearer {_token(pki, subject='mallory')}"),
                (calls.FORWARDED_PEER_KEY, "ipv4:10.6.6.6:1"), (calls.FORWARDED_CERT_KEY, "CN=chief-of-medicine"))
    with channel(background.address.replace("127.0.0.1", "localhost"), pki / "ca.pem", pki / "client.pem",
                 pki / "client.key") as ch:
        _, call = pb_grpc.RetrievalStub(ch).ListModels.with_call(pb.ListModelsRequest(), metadata=metadata,
                                                                  timeout=30)
    request_id = dict(call.trailing_metadata())[calls.REQUEST_ID_KEY]
    line = _audit_line(settings, request_id)
    assert line["principal"] == "mallory"
    assert "10.6.6.6" not in line["peer"] and line["peer"].startswith("ipv")
    assert line["client_cert"].startswith("CN=cxr-dev-client")
