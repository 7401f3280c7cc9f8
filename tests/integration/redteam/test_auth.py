"""Red team, identity: forged and odd credentials over gRPC and HTTP, and what a principal without the
`studies` scope learns of patients from search answers (issue 17: defects 3, 12, 22)."""

from __future__ import annotations

import csv
import json
import re
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cxr import dev_pki
from cxr.client import channel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import hits
from support import DATA_DIR

pytestmark = pytest.mark.triton
PNG = (DATA_DIR / "cxr_samples" / "00000001_000.png").read_bytes()


def _signing_key(target):
    return serialization.load_pem_private_key((target.settings.ca.parent / dev_pki.SIGNING_KEY).read_bytes(), None)


def _jwt(target, key=None, alg="ES256", kid=dev_pki.SIGNING_KEY_ID, scopes=("search", "studies"), **claims):
    now = int(time.time())
    body = {"sub": "mallory", "iss": target.settings.jwt_issuer, "aud": target.settings.jwt_audience, "iat": now,
            "exp": now + 600, "scope": " ".join(scopes), **claims}
    return jwt.encode(body, key or _signing_key(target), algorithm=alg, headers={"kid": kid})


def _stub(target):
    return channel(target.address.replace("127.0.0.1", "localhost"), target.settings.ca, target.settings.client_cert,
                   target.settings.client_key)


def _search_text(target, token: str, **fields):
    with _stub(target) as ch:
        return pb_grpc.RetrievalStub(ch).SearchByText.with_call(
            pb.SearchByTextRequest(text="pleural effusion", top_k=10, **fields),
            metadata=(("authorization", f"Bearer {token}"),), timeout=30)


FORGERIES = {
    "RS256 against the EC key set": lambda t: _jwt(t, key=rsa.generate_private_key(65537, 2048), alg="RS256"),
    "valid for 100 years": lambda t: _jwt(t, exp=int(time.time()) + 100 * 365 * 86400),
    "valid for 25 hours": lambda t: _jwt(t, exp=int(time.time()) + 25 * 3600),
    "unsigned (alg none)": lambda t: jwt.encode({"sub": "mallory"}, None, algorithm="none"),
    "HS256 with the public key": lambda t: _jwt(t, key="a shared secret that is long enough for HS256 x", alg="HS256"),
    "a foreign key": lambda t: _jwt(t, key=ec.generate_private_key(ec.SECP256R1())),
    "an unknown kid": lambda t: _jwt(t, kid="rotated-away"),
    "expired": lambda t: _jwt(t, exp=int(time.time()) - 3600),
    "another audience": lambda t: _jwt(t, aud="billing"),
}
WHY = {"RS256 against the EC key set": "not signed by this identity provider", "valid for 100 years": "jwt_max_ttl_s",
       "valid for 25 hours": "jwt_max_ttl_s"}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_or_overlong_jwt_is_refused_cleanly_over_grpc_and_audited(secured_gateway, forgery):
    token = FORGERIES[forgery](secured_gateway)
    with pytest.raises(grpc.RpcError) as error:
        _search_text(secured_gateway, token)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, error.value.details()
    assert WHY.get(forgery, "") in error.value.details()
    request_id = dict(error.value.trailing_metadata())["x-request-id"]
    assert _audited(secured_gateway, request_id)["status"] == "UNAUTHENTICATED"


def _audited(target, request_id: str, wait_s: float = 5) -> dict:
    """The audit line of a call. A refusal's status leaves with context.abort, just before its line is written."""
    deadline = time.monotonic() + wait_s
    while True:
        for line in target.audit_log.read_text().splitlines():
            if json.loads(line)["request_id"] == request_id:
                return json.loads(line)
        assert time.monotonic() < deadline, f"no audit line for {request_id}"
        time.sleep(0.05)


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_or_overlong_jwt_is_refused_cleanly_over_http(secured_gateway, forgery):
    token = FORGERIES[forgery](secured_gateway)
    with secured_gateway.http(token=False) as http:
        answer = http.post("/v1/search/text", json={"text": "effusion"}, headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", answer.text
    error = answer.json()["error"]
    assert error["status"] == "UNAUTHENTICATED" and len(error["requestId"]) == 32
    assert WHY.get(forgery, "") in error["message"]


# --- 12: what a search-only principal learns of patients ----------------------------------------------

@pytest.fixture(scope="module")
def patient_ids() -> set[str]:
    with (DATA_DIR / "nih800" / "labels.csv").open(newline="") as f:
        return {row["patient_id"].zfill(8) for row in csv.DictReader(f)}


def _answers_for(target, scopes) -> list[pb.SearchResponse]:
    """A text, an image, a grouped and a batch search with a token of `scopes`."""
    metadata = (("authorization", f"Bearer {_jwt(target, scopes=scopes)}"),)
    with _stub(target) as ch:
        stub = pb_grpc.RetrievalStub(ch)
        text = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=20), metadata=metadata, timeout=30)
        image = stub.SearchByImage(pb.SearchByImageRequest(image=PNG, top_k=20), metadata=metadata, timeout=30)
        grouped = stub.SearchByText(pb.SearchByTextRequest(text="mass", top_k=5, group_by_study=True),
                                    metadata=metadata, timeout=30)
        batch = stub.BatchSearch(pb.BatchSearchRequest(queries=[
            pb.SearchQuery(text=pb.SearchByTextRequest(text="nodule", top_k=5)),
            pb.SearchQuery(image=pb.SearchByImageRequest(image=PNG, top_k=5))]), metadata=metadata, timeout=30)
    return [text, image, grouped, *batch.results]


def test_a_search_only_principal_gets_no_patient_derived_id_and_no_report(secured_gateway, patient_ids):
    answers = _answers_for(secured_gateway, ("search",))
    found = [hit for answer in answers for hit in answer.hits]
    assert len(found) >= 50
    for hit in found:
        assert re.fullmatch(r"[0-9a-f]{24}", hit.image_id) and re.fullmatch(r"[0-9a-f]{24}", hit.study_uid), hit
        assert all(re.fullmatch(r"[0-9a-f]{24}", image_id) for image_id in hit.image_ids)
        assert not any(getattr(hit, name) for name in hits.PATIENT_FIELDS), hit
        assert hit.labels and hit.projection  # what the search is for stays
    text = " ".join(str(answer) for answer in answers)
    assert not [p for p in patient_ids if p in text]  # NIH file names begin with the patient id


def test_opaque_ids_are_stable_and_the_studies_scope_gets_the_real_ones(secured_gateway):
    search_only = [_answers_for(secured_gateway, ("search",))[0] for _ in range(2)]
    assert [h.image_id for h in search_only[0].hits] == [h.image_id for h in search_only[1].hits]
    full = _answers_for(secured_gateway, ("search", "studies"))[0]
    assert [h.score for h in full.hits] == pytest.approx([h.score for h in search_only[0].hits], abs=1e-6)
    assert all(h.image_id.endswith(".png") and h.filename for h in full.hits)
    assert {h.image_id for h in full.hits}.isdisjoint(h.image_id for h in search_only[0].hits)


def test_a_search_only_principal_gets_no_patient_data_over_http_either(secured_gateway, patient_ids):
    token = _jwt(secured_gateway, scopes=("search",))
    with secured_gateway.http(token=False) as http:
        answer = http.post("/v1/search/text", json={"text": "effusion", "topK": 20},
                           headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 20
    assert not [p for p in patient_ids if p in answer.text]
    assert all(set(hit) <= {"rank", "score", "imageId", "studyUid", "projection", "labels", "viewPosition"}
               for hit in answer.json()["hits"])
