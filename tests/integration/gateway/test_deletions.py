"""Administrators' deletions through the real gateway (auth on, audit trail on), over gRPC and HTTP, on a
copy of the session's NIH index (real FAISS living index, real Triton): the first search after the answer
never returns what was deleted, a second deletion is NOT_FOUND, only the `admin` scope may delete, and the
audit trail names what was deleted and nothing of the patient."""

import json
import shutil
import time
from dataclasses import replace

import grpc
import httpx
import pytest

from cxr import dev_pki
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from support import GATEWAY_MODEL, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = GATEWAY_MODEL
ISSUER, AUDIENCE = "cxr-dev", "cxr-retrieval"
QUERY = "cardiomegaly"
ALL = 1000  # top_k at its limit: more than the 800 images of the index, so a search returns every one
# What a deletion's audit line may hold: who, what was named, the outcome; nothing else.
LINE_KEYS = {"seq", "file", "time", "request_id", "principal", "client_cert", "peer", "method", "queries", "status",
             "latency_ms", "hits", "study_uids", "deleted", "generation", "prev"}


@pytest.fixture(scope="module")
def site(served, nih_index, tmp_path_factory):
    """A gateway of its own, with its HTTP API, tokens and an audit log, on a copy of the NIH index (the
    session's stays whole for the other tests)."""
    root = tmp_path_factory.mktemp("deletions")
    shutil.copytree(nih_index, root / "indexes" / MODEL)
    pki = root / "pki"
    dev_pki.write_dev_pki(pki)
    settings = replace(served, model=MODEL, index_dir=root / "indexes", auth="token",
                       jwt_jwks=str(pki / dev_pki.JWKS_FILE), jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                       audit_log=root / "audit" / "audit.log", rate_limit_per_s=0)
    background = BackgroundGateway(settings, http=True)
    try:
        yield background, settings, pki
    finally:
        background.stop()


def _token(pki, subject: str, scopes) -> str:
    return dev_pki.issue_token(pki / dev_pki.SIGNING_KEY, subject, list(scopes), 600, ISSUER, AUDIENCE)


def _bearer(pki, subject="dr.admin", scopes=("search", "studies", "admin")) -> tuple:
    return (("authorization", f"Bearer {_token(pki, subject, scopes)}"),)


@pytest.fixture
def stub(site):
    background, _, _ = site
    with grpc.insecure_channel(background.address) as channel:
        yield pb_grpc.RetrievalStub(channel)


@pytest.fixture
def http(site):
    background, _, _ = site
    with httpx.Client(base_url=background.http_url, timeout=60) as client:
        yield client


def _hits(stub, pki) -> list:
    request = pb.SearchByTextRequest(text=QUERY, top_k=ALL)
    return list(stub.SearchByText(request, metadata=_bearer(pki), timeout=60).hits)


def _not_found(call) -> str:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == grpc.StatusCode.NOT_FOUND, error.value.details()
    return error.value.details()


def _audit_lines(settings, method: str) -> list[dict]:
    time.sleep(0.2)  # the line is written before the answer leaves; its read here may race the write's end
    lines = [json.loads(line) for line in settings.audit_log.read_text().splitlines() if line.endswith("}")]
    return [line for line in lines if line["method"] == method]


def test_grpc_deletions_vanish_from_the_next_search_and_a_second_is_not_found(site, stub):
    _, _, pki = site
    hits = _hits(stub, pki)
    study, image = hits[0].study_uid, next(h for h in hits if h.study_uid != hits[0].study_uid)
    images = list(stub.GetStudy(pb.GetStudyRequest(study_uid=study), metadata=_bearer(pki), timeout=30).image_ids)

    answer = stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), metadata=_bearer(pki), timeout=60)
    assert answer.deleted == len(images) and answer.generation >= 1
    assert study not in {h.study_uid for h in _hits(stub, pki)}
    later = stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id, model=MODEL), metadata=_bearer(pki),
                             timeout=60)
    assert later.deleted == 1 and later.generation > answer.generation
    left = _hits(stub, pki)
    assert image.image_id not in {h.image_id for h in left} and len(left) == len(hits) - len(images) - 1

    _not_found(lambda: stub.GetStudy(pb.GetStudyRequest(study_uid=study), metadata=_bearer(pki), timeout=30))
    again = _not_found(lambda: stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), metadata=_bearer(pki),
                                                timeout=60))
    assert "nothing indexed under that UID; already deleted or never indexed" in again
    _not_found(lambda: stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id), metadata=_bearer(pki),
                                        timeout=60))


def test_http_deletions_answer_json_and_vanish_from_the_next_search(site, stub, http):
    _, _, pki = site
    hits = _hits(stub, pki)
    study, image = hits[0].study_uid, hits[-1]
    headers = {"authorization": f"Bearer {_token(pki, 'dr.http', ['search', 'studies', 'admin'])}"}

    answer = http.delete(f"/v1/studies/{study}", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"deleted", "generation"} and body["deleted"] >= 1 and isinstance(body["generation"], int)
    found = http.post("/v1/search/text", json={"text": QUERY, "topK": ALL}, headers=headers).json()["hits"]
    assert study not in {h["studyUid"] for h in found}

    answer = http.delete(f"/v1/images/{image.image_id}", params={"model": MODEL}, headers=headers)
    assert answer.status_code == 200 and answer.json()["deleted"] == 1, answer.text
    assert image.image_id not in {h.image_id for h in _hits(stub, pki)}
    again = http.delete(f"/v1/studies/{study}", headers=headers)
    assert again.status_code == 404 and again.json()["error"]["status"] == "NOT_FOUND"
    assert "already deleted or never indexed" in again.json()["error"]["message"]


def test_only_the_admin_scope_may_delete(site, stub, http):
    _, _, pki = site
    study = _hits(stub, pki)[0].study_uid
    clinician = _bearer(pki, "dr.clinician", ("search", "studies"))
    with pytest.raises(grpc.RpcError) as denied:
        stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), metadata=clinician, timeout=30)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'admin'" in denied.value.details()
    with pytest.raises(grpc.RpcError) as anonymous:
        stub.DeleteImage(pb.DeleteImageRequest(image_id=study), timeout=30)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = http.delete(f"/v1/studies/{study}", headers={"authorization": clinician[0][1]})
    assert answer.status_code == 403 and answer.json()["error"]["status"] == "PERMISSION_DENIED"
    assert http.delete(f"/v1/studies/{study}").status_code == 401
    assert stub.GetStudy(pb.GetStudyRequest(study_uid=study), metadata=_bearer(pki), timeout=30).image_ids


def test_the_audit_trail_names_what_was_deleted_and_nothing_of_the_patient(site, stub):
    _, settings, pki = site
    study = _hits(stub, pki)[0].study_uid
    record = stub.GetStudy(pb.GetStudyRequest(study_uid=study), metadata=_bearer(pki), timeout=30)
    answer = stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), metadata=_bearer(pki, "dr.audit"), timeout=60)
    _not_found(lambda: stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), metadata=_bearer(pki, "dr.audit"),
                                        timeout=60))

    done, refused = [line for line in _audit_lines(settings, "DeleteStudy") if line["principal"] == "dr.audit"
                     and line["queries"][0].get("study_uid") == study]
    assert done["status"] == "OK" and refused["status"] == "NOT_FOUND"
    assert (done["deleted"], done["generation"], done["study_uids"]) == (answer.deleted, answer.generation, [study])
    assert done["queries"] == [{"kind": "delete_study", "model": "", "study_uid": study}]
    for line in (done, refused):
        assert set(line) <= LINE_KEYS, set(line) - LINE_KEYS
    assert record.patient_id and f'"{record.patient_id}"' not in json.dumps([done, refused])
