"""What an audit line says about a call: no query text or image, only what is known or bounded; every line
bounded in size."""

import json

import grpc
import pytest

from cxr import registry
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import admission, audit_log, audit_records, calls

BATCH = "/cxr.retrieval.v1.Retrieval/BatchSearch"
SEARCH_TEXT = "/cxr.retrieval.v1.Retrieval/SearchByText"
GET_STUDY = "/cxr.retrieval.v1.Retrieval/GetStudy"


def test_a_line_holds_no_query_text_only_its_hmac(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.SearchByTextRequest(text="left pleural effusion, patient Jane Doe", top_k=5,
                                     filters=pb.Filters(labels=["Effusion"]))
    described = audit_records.describe_request(SEARCH_TEXT, request, log, answered=True)
    assert "Jane" not in json.dumps(described)
    (query,) = described["queries"]
    assert query == {"kind": "text", "model": "", "top_k": 5, "hmac": log.hmac(request.text.encode()),
                     "filters": {"labels": ["Effusion"]}}
    assert (tmp_path / "audit.log.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("model, shown", [("", True), (registry.list_models()[0], True), ("Jane Doe", False)])
def test_a_model_is_written_only_when_registered(tmp_path, model, shown):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.SearchByTextRequest(text="x", model=model)
    (query,) = audit_records.describe_request(SEARCH_TEXT, request, log)["queries"]
    if shown:
        assert query["model"] == model and "model_hmac" not in query
    else:
        assert "model" not in query and query["model_hmac"] == log.hmac(model.encode()) and query["model_chars"] == 8


@pytest.mark.parametrize("uid, shown", [("1.2.840.113619.2.55.3", True), ("x1", True), ("Jane Doe", False),
                                        ("1" * 65, False)])
def test_a_study_uid_is_written_only_when_short_and_of_a_uid_charset(tmp_path, uid, shown):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.GetStudyRequest(study_uid=uid)
    (query,) = audit_records.describe_request(GET_STUDY, request, log, answered=True)["queries"]
    assert (query.get("study_uid") == uid) is shown
    assert ("study_uid_hmac" in query) is not shown


def test_filter_values_of_a_call_not_answered_are_hmacs(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    labels = ["Effusion", "Jane Doe"]
    request = pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=labels))
    (query,) = audit_records.describe_request(SEARCH_TEXT, request, log, answered=False)["queries"]
    assert query["filters"] == {"labels_hmac": log.hmac(json.dumps(labels, separators=(",", ":")).encode()),
                                "labels_count": 2}


def test_filter_values_of_an_answered_call_are_listed_once_and_counted(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    labels = ["Effusion"] * 1000 + [f"L{i}" for i in range(40)] + ["x" * 65]
    request = pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=labels))
    (query,) = audit_records.describe_request(SEARCH_TEXT, request, log, answered=True)["queries"]
    listed = query["filters"]["labels"]
    assert listed[0] == "Effusion" and len(listed) == audit_records.FILTER_VALUES_LISTED
    assert query["filters"]["labels_count"] == len(labels)


def test_a_batch_records_at_most_a_valid_batch_of_queries_and_a_total(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.BatchSearchRequest(queries=[pb.SearchQuery(text=pb.SearchByTextRequest(text=str(i)))
                                             for i in range(5000)])
    described = audit_records.describe_request(BATCH, request, log)
    assert len(described["queries"]) == admission.MAX_BATCH_QUERIES == 256
    assert described["query_count"] == 5000


class _Context:
    """What describe_call asks of a grpc context."""

    def __init__(self, peer: str, subject: str):
        self._peer, self._subject = peer, subject

    def peer(self):
        return self._peer

    def auth_context(self):
        return {"x509_subject": [self._subject.encode()]}

    def invocation_metadata(self):
        return ()


def _worst_line(tmp_path, status: grpc.StatusCode) -> bytes:
    """The longest line a call can make the gateway write, less the study UIDs of an answer: every field
    at its limit, values whose JSON escapes are six bytes a character, more of everything than is kept."""
    escaped = "\U0001F600" * 21 + "xxxx"  # 256 bytes as written
    values = [f"{i:02d}" + "\x01" * 10 + "aa" for i in range(40)]  # 64 bytes each as written
    query = pb.SearchQuery(image=pb.SearchByImageRequest(
        image=b"x", top_k=-2**31, model="m" * 200_000, filters=pb.Filters(projections=values, labels=values)))
    request = pb.BatchSearchRequest(queries=[query] * 300)
    assert request.ByteSize() <= 64 * 2**20  # what the gateway accepts (MAX_MESSAGE_BYTES)
    call = calls.Call(BATCH, principal=escaped)
    answer = pb.BatchSearchResponse(results=[pb.SearchResponse(model=m) for m in registry.list_models()])
    log = audit_log.AuditLog(tmp_path / "audit.log")
    line = audit_records.describe_call(call, _Context("ipv6:[" + "f" * 240 + "]:65535", escaped), request, status,
                                       answer if status == grpc.StatusCode.OK else None, log)
    line["latency_ms"] = 12345678.91
    log.append(line)
    log.close()
    (written,) = (tmp_path / "audit.log").read_bytes().splitlines()
    return written


def test_the_worst_line_is_under_the_stated_bounds(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "refused").mkdir()
    answered = _worst_line(tmp_path / "ok", grpc.StatusCode.OK)
    refused = _worst_line(tmp_path / "refused", grpc.StatusCode.FAILED_PRECONDITION)
    assert len(answered) < audit_records.MAX_LINE_BYTES and len(refused) < audit_records.MAX_REFUSED_LINE_BYTES
    for line in (answered, refused):
        assert b"mmmm" not in line and json.loads(line)["query_count"] == 300
    assert b"\\u0001" not in refused  # a refused call's filter values are not written


@pytest.mark.parametrize("method, request_, kind, field", [
    ("DeleteStudy", pb.DeleteStudyRequest(study_uid="1.2.840.113619.2.55.3"), "delete_study", "study_uid"),
    ("DeleteImage", pb.DeleteImageRequest(image_id="00000002_000.png", model="cxr-mini"), "delete_image", "image_id"),
])
def test_a_deletion_line_names_what_was_deleted_and_the_outcome(tmp_path, method, request_, kind, field):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    full = f"/cxr.retrieval.v1.Retrieval/{method}"
    (query,) = audit_records.describe_request(full, request_, log, answered=True)["queries"]
    assert query == {"kind": kind, "model": request_.model, field: getattr(request_, field)}
    call = calls.Call(full, study_uids=["1.2.840.113619.2.55.3"] if field == "study_uid" else [])
    described = audit_records.describe_response(full, getattr(pb, f"{method}Response")(deleted=2, generation=7), call)
    assert described == {"hits": 0, "study_uids": call.study_uids, "deleted": 2, "generation": 7}


def test_a_deletion_naming_what_no_identifier_looks_like_is_written_as_an_hmac(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.DeleteImageRequest(image_id="Jane Doe chest.png")
    (query,) = audit_records.describe_request("/cxr.retrieval.v1.Retrieval/DeleteImage", request, log)["queries"]
    assert "Jane" not in json.dumps(query) and query["image_id_hmac"] == log.hmac(request.image_id.encode())


def test_a_search_by_an_archived_image_and_its_refinements_are_named_never_shown(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    request = pb.SearchByImageRequest(image_id="00000116_017", with_text="Jane Doe's effusion",
                                      roi=pb.RegionOfInterest(width=0.5, height=0.5),
                                      feedback=pb.Feedback(relevant_image_ids=["00000116_018"]))
    described = audit_records.describe_request("/cxr.retrieval.v1.Retrieval/SearchByImage", request, log, True)
    assert "00000116" not in json.dumps(described) and "Jane" not in json.dumps(described)
    (query,) = described["queries"]
    assert query == {"kind": "archived_image", "model": "", "top_k": 0, "hmac": log.hmac(b"00000116_017"),
                     "refined": ["feedback", "with_text", "roi"]}
    text = pb.SearchByTextRequest(text="x", exclude_text="pacemaker")
    (query,) = audit_records.describe_request(SEARCH_TEXT, text, log, True)["queries"]
    assert query["kind"] == "text" and query["refined"] == ["exclude_text"]
    batch = pb.BatchSearchRequest(queries=[pb.SearchQuery(image=pb.SearchByImageRequest(image_id="a"))])
    (query,) = audit_records.describe_request(BATCH, batch, log, True)["queries"]
    assert query["kind"] == "archived_image" and query["hmac"] == log.hmac(b"a")
