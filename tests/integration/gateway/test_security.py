"""The real gateway with mutual TLS, tokens and the audit trail on, in front of the real Triton.

Every RPC of the proto's service descriptor is tried with each kind of bad credential, so a new
RPC cannot slip in unprotected."""

import json
import time
from dataclasses import replace

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxr import dev_pki
from cxr.client import RetrievalClient, channel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import api_keys, audit_chain, audit_log
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
SERVICE = pb.DESCRIPTOR.services_by_name["Retrieval"]
METHODS = [m.name for m in SERVICE.methods]
ISSUER, AUDIENCE = "cxr-dev", "cxr-retrieval"
DICOM = DATA_DIR / "cxr_samples" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def secured(served, nih_index, tmp_path_factory):
    """The gateway with mTLS, auth = token (JWTs + API keys) and an audit log."""
    root = tmp_path_factory.mktemp("secured")
    pki = root / "pki"
    dev_pki.write_dev_pki(pki)
    keys_file = root / "keys.json"
    settings = replace(served, model="medsiglip-tiny", tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                       tls_client_ca=pki / "ca.pem", auth="token", jwt_jwks=str(pki / "jwks.json"),
                       jwt_issuer=ISSUER, jwt_audience=AUDIENCE, api_keys_file=keys_file,
                       audit_log=root / "audit" / "audit.log", rate_limit_per_s=0)
    background = BackgroundGateway(settings)
    try:
        yield background, settings, pki
    finally:
        background.stop()


def _token(pki, scopes=("search", "studies", "admin"), key=None, **claims):
    key = key or serialization.load_pem_private_key((pki / "signing.key").read_bytes(), None)
    now = int(time.time())
    body = {"sub": "dr.test", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
            "scope": " ".join(scopes), **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": dev_pki.SIGNING_KEY_ID})


def _channel(address, pki, client_cert=True):
    cert = (pki / "client.pem", pki / "client.key") if client_cert else (None, None)
    return channel(address.replace("127.0.0.1", "localhost"), pki / "ca.pem", *cert)


def _call(ch, method: str, token: str | None, request=None):
    request_type = getattr(pb, SERVICE.methods_by_name[method].input_type.name)
    response_type = getattr(pb, SERVICE.methods_by_name[method].output_type.name)
    rpc = ch.unary_unary(f"/{SERVICE.full_name}/{method}", request_serializer=request_type.SerializeToString,
                         response_deserializer=response_type.FromString)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return rpc(request if request is not None else request_type(), metadata=metadata, timeout=30)


def _revoked_key(settings):
    record, key = api_keys.add(settings.api_keys_file, "old-job", ["search", "studies", "admin"])
    time.sleep(0.01)
    api_keys.revoke(settings.api_keys_file, record.id)
    time.sleep(1.1)  # the gateway looks at the key file at most once a second
    return key


BAD_CREDENTIALS = {
    "no token": (lambda pki, s: None, grpc.StatusCode.UNAUTHENTICATED, "no credential"),
    "bad signature": (lambda pki, s: _token(pki, key=dev_pki._new_key()), grpc.StatusCode.UNAUTHENTICATED, "signature"),
    "expired": (lambda pki, s: _token(pki, exp=int(time.time()) - 3600), grpc.StatusCode.UNAUTHENTICATED, "expired"),
    "wrong audience": (lambda pki, s: _token(pki, aud="billing"), grpc.StatusCode.UNAUTHENTICATED, "audience"),
    "revoked key": (lambda pki, s: _revoked_key(s), grpc.StatusCode.UNAUTHENTICATED, "revoked"),
    "garbage": (lambda pki, s: "let-me-in", grpc.StatusCode.UNAUTHENTICATED, "well-formed"),
    "missing scope": (lambda pki, s: _token(pki, scopes=()), grpc.StatusCode.PERMISSION_DENIED, "needs the scope"),
}


@pytest.mark.parametrize("case", BAD_CREDENTIALS)
@pytest.mark.parametrize("method", METHODS)
def test_every_rpc_refuses_a_bad_credential(secured, method, case):
    background, settings, pki = secured
    make, code, words = BAD_CREDENTIALS[case]
    token = make(pki, settings)
    with _channel(background.address, pki) as ch:
        with pytest.raises(grpc.RpcError) as error:
            _call(ch, method, token)
    assert error.value.code() == code and words in error.value.details(), error.value.details()
    assert token is None or token not in error.value.details()


VALID = {
    "SearchByText": lambda: pb.SearchByTextRequest(text="pleural effusion", top_k=3),
    "SearchByImage": lambda: pb.SearchByImageRequest(image=DICOM.read_bytes(), top_k=3),
    "BatchSearch": lambda: pb.BatchSearchRequest(queries=[pb.SearchQuery(text=pb.SearchByTextRequest(text="mass"))]),
    "GetStudy": lambda: pb.GetStudyRequest(study_uid="00000002_000"),
    "ListModels": lambda: pb.ListModelsRequest(),
    "GetThumbnail": lambda: pb.GetThumbnailRequest(image_id="00000002_000.png", size=64),
    "GetSearchOptions": lambda: pb.GetSearchOptionsRequest(),
    # Names nothing indexed: past auth the service answers NOT_FOUND, and the session's index keeps its studies.
    "DeleteStudy": lambda: pb.DeleteStudyRequest(study_uid="not-indexed"),
    "DeleteImage": lambda: pb.DeleteImageRequest(image_id="not-indexed.png"),
}
SCOPE_OF = {"SearchByText": "search", "SearchByImage": "search", "BatchSearch": "search", "GetStudy": "studies",
            "ListModels": "admin", "GetThumbnail": "studies", "GetSearchOptions": "search", "DeleteStudy": "admin",
            "DeleteImage": "admin"}
ANSWERED_NOT_FOUND = {"DeleteStudy", "DeleteImage"}


@pytest.mark.parametrize("method", METHODS)
def test_every_rpc_answers_a_token_with_its_scope_and_only_that(secured, method):
    background, _, pki = secured
    with _channel(background.address, pki) as ch:
        try:
            _call(ch, method, _token(pki, scopes=[SCOPE_OF[method]]), VALID[method]())
        except grpc.RpcError as error:  # the service's own answer, given only past auth
            assert method in ANSWERED_NOT_FOUND and error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        others = [s for s in ("search", "studies", "admin") if s != SCOPE_OF[method]]
        with pytest.raises(grpc.RpcError) as error:
            _call(ch, method, _token(pki, scopes=others), VALID[method]())
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_api_key_works_like_a_token(secured):
    background, settings, pki = secured
    _, key = api_keys.add(settings.api_keys_file, "pacs-router", ["search"])
    time.sleep(1.1)
    client = RetrievalClient(background.address.replace("127.0.0.1", "localhost"), pki / "ca.pem",
                             pki / "client.pem", pki / "client.key", token=key)
    with client:
        assert len(client.search_text("cardiomegaly", top_k=4).hits) == 4
        assert len(client.last_request_id) == 32


def test_plaintext_and_certificate_less_clients_are_refused(secured):
    background, _, pki = secured
    token = _token(pki)
    with grpc.insecure_channel(background.address) as ch:
        with pytest.raises(grpc.RpcError) as plain:
            _call(ch, "SearchByText", token, VALID["SearchByText"]())
    with _channel(background.address, pki, client_cert=False) as ch:
        with pytest.raises(grpc.RpcError) as no_cert:
            _call(ch, "SearchByText", token, VALID["SearchByText"]())
    assert plain.value.code() == no_cert.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_is_open_and_reflection_needs_a_token(secured):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    background, _, pki = secured
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with _channel(background.address, pki) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=10))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {_token(pki, scopes=['search'])}"),)
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=10,
                                                                                      metadata=metadata)
    assert SERVICE.full_name in {s.name for s in answer.list_services_response.service}


def test_the_audit_log_records_who_saw_which_studies_and_never_the_query(secured):
    background, settings, pki = secured
    text = "left pleural effusion in patient Jane Roe"
    with _channel(background.address, pki) as ch:
        response = _call(ch, "SearchByText", _token(pki, sub="dr.audit"), pb.SearchByTextRequest(text=text, top_k=5))
        with pytest.raises(grpc.RpcError):
            _call(ch, "GetStudy", _token(pki, sub="dr.nosy", scopes=["search"]), pb.GetStudyRequest(study_uid="x1"))
    time.sleep(0.2)
    raw = settings.audit_log.read_text()
    assert "Jane" not in raw and "effusion" not in raw
    lines = [json.loads(line) for line in raw.splitlines()]
    found = next(item for item in lines if item["principal"] == "dr.audit")
    assert found["status"] == "OK" and found["method"] == "SearchByText"
    assert found["study_uids"] == list(dict.fromkeys(h.study_uid for h in response.hits))
    assert found["client_cert"].startswith("CN=cxr-dev-client") and found["peer"].startswith("ipv")
    assert found["queries"][0]["hmac"] == audit_log.query_hmac(audit_chain.load_key(settings.audit_log), text.encode())
    nosy = next(item for item in lines if item["principal"] == "dr.nosy")
    assert nosy["status"] == "PERMISSION_DENIED" and nosy["queries"] == [{"kind": "study", "model": "",
                                                                          "study_uid": "x1"}]
    assert audit_chain.verify_log(settings.audit_log) == (None, len(lines))


def test_cxr_search_works_with_tls_and_a_token_and_says_why_without(secured):
    import os
    import subprocess
    import sys

    background, settings, pki = secured
    env = dict(os.environ, CXR_GATEWAY_HOST="localhost", CXR_GATEWAY_PORT=background.address.split(":")[1],
               CXR_CA=str(pki / "ca.pem"), CXR_CLIENT_CERT=str(pki / "client.pem"),
               CXR_CLIENT_KEY=str(pki / "client.key"))
    command = [sys.executable, "-m", "cxr_cli", "search", "text", "cardiomegaly", "--top-k", "2"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 6 and "UNAUTHENTICATED" in refused.stderr  # refused
    answered = subprocess.run([*command, "--token", _token(pki, scopes=["search"])], env=env, capture_output=True,
                              text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    assert "model: medsiglip-tiny" in answered.stdout and len(answered.stdout.splitlines()) == 4
