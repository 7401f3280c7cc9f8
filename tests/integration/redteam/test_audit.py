"""Issue 17, defects 2 (audit half) and 13: the audit trail tried as a hostile client and a careless or
dishonest operator would.

- Flood: what a client sends (a 5 MB model name or label, a 100,000-character study uid, a batch of
  10,000 queries) adds lines under the stated bound through the real gateway (configuration B, the
  audit log on), token or none, and the client's string is never in the log; a label a user typed that
  the index does not hold (a patient's name) is not written either.
- Chain: the gateway's own log verifies whole; what `cxr audit verify` refuses (an edited line re-chained
  with SHA-256, lines cut, a rotated file dropped, only the live file given) needs no gateway:
  tests/unit/cxr_cli/test_security.py.
"""

from __future__ import annotations

import json
import ssl
import time

import grpc
import httpx
import pytest

from cxr_cli.main import main as cxr
from cxr.client import channel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import audit_records

FIVE_MB = 5 * 2**20
MARKER = "PatientJaneRoe-"  # what a client string holds; never in the log


def _files(log):
    rotated = sorted(p for p in log.parent.glob(f"{log.name}.*") if p.suffix[1:].isdigit())
    return [*rotated, log]


def _raw_lines(log) -> list[bytes]:
    """The complete lines: a long line being written may be read half-way (its end not yet flushed)."""
    return [line for path in _files(log) if path.exists() for line in path.read_bytes().split(b"\n")[:-1]]


def _stub(target, token: bool):
    s = target.settings
    ch = channel(target.address.replace("127.0.0.1", "localhost"), s.ca, s.client_cert, s.client_key,
                 s.token if token else "")
    return ch, pb_grpc.RetrievalStub(ch)


def _new_lines(target, calls: int, send) -> list[bytes]:
    """The lines `send` (which makes `calls` calls, each refused) adds to the audit log."""
    before = len(_raw_lines(target.audit_log))
    send()
    for _ in range(50):  # the line is written before the status leaves; a bounded wait all the same
        lines = _raw_lines(target.audit_log)[before:]
        if len(lines) >= calls:
            return lines
        time.sleep(0.1)
    return lines


def _refused(rpc, request, code=None):
    with pytest.raises(grpc.RpcError) as caught:
        rpc(request, timeout=60)
    if code is not None:
        assert caught.value.code() == code, caught.value.details()


def _assert_bounded_and_clean(lines: list[bytes], calls: int):
    assert len(lines) == calls
    for line in lines:
        assert MARKER.encode() not in line
        assert len(line) < audit_records.MAX_REFUSED_LINE_BYTES, len(line)
        assert json.loads(line)["status"] != "OK"


@pytest.mark.triton
@pytest.mark.parametrize("token", [False, True], ids=["no token", "token"])
def test_a_5mb_model_name_adds_small_lines_without_it(secured_gateway, token):
    ch, stub = _stub(secured_gateway, token)
    model = (MARKER * (FIVE_MB // len(MARKER)))
    with ch:
        lines = _new_lines(secured_gateway, 4, lambda: [_refused(stub.SearchByText,
                                                                 pb.SearchByTextRequest(text="effusion", model=model))
                                                        for _ in range(4)])
    _assert_bounded_and_clean(lines, 4)
    (query,) = json.loads(lines[0])["queries"]
    assert query["model_chars"] == len(model) and "model" not in query


@pytest.mark.triton
@pytest.mark.parametrize("token", [False, True], ids=["no token", "token"])
def test_a_5mb_label_filter_adds_small_lines_without_it(secured_gateway, token):
    ch, stub = _stub(secured_gateway, token)
    labels = [MARKER * 1000] * (FIVE_MB // (len(MARKER) * 1000))
    request = pb.SearchByTextRequest(text="effusion", filters=pb.Filters(labels=labels))
    with ch:
        lines = _new_lines(secured_gateway, 2, lambda: [_refused(stub.SearchByText, request) for _ in range(2)])
    _assert_bounded_and_clean(lines, 2)
    assert json.loads(lines[0])["queries"][0]["filters"]["labels_count"] == len(labels)


@pytest.mark.triton
@pytest.mark.parametrize("token", [False, True], ids=["no token", "token"])
def test_a_100000_character_study_uid_is_not_written(secured_gateway, token):
    ch, stub = _stub(secured_gateway, token)
    uid = (MARKER * 7000)[:100_000]
    with ch:
        lines = _new_lines(secured_gateway, 1, lambda: _refused(stub.GetStudy, pb.GetStudyRequest(study_uid=uid)))
    _assert_bounded_and_clean(lines, 1)
    (query,) = json.loads(lines[0])["queries"]
    assert query["study_uid_chars"] == 100_000 and "study_uid" not in query


@pytest.mark.triton
@pytest.mark.parametrize("token", [False, True], ids=["no token", "token"])
def test_an_oversized_batch_records_a_valid_batchs_worth_and_a_total(secured_gateway, token):
    ch, stub = _stub(secured_gateway, token)
    query = pb.SearchQuery(text=pb.SearchByTextRequest(text="effusion", model=MARKER * 100,
                                                       filters=pb.Filters(labels=[MARKER], projections=[MARKER])))
    request = pb.BatchSearchRequest(queries=[query] * 10_000)
    with ch:
        lines = _new_lines(secured_gateway, 1, lambda: _refused(stub.BatchSearch, request))
    _assert_bounded_and_clean(lines, 1)
    line = json.loads(lines[0])
    assert line["query_count"] == 10_000 and len(line["queries"]) == 256


@pytest.mark.triton
def test_a_label_the_index_does_not_hold_is_not_written_one_it_does_is(secured_gateway):
    """A user types a patient's name into the label filter of the search page (the HTTP API)."""
    s = secured_gateway.settings
    context = ssl.create_default_context(cafile=s.ca)
    context.load_cert_chain(s.client_cert, s.client_key)
    headers = {"authorization": f"Bearer {s.token}"}
    with httpx.Client(base_url=secured_gateway.http_url.replace("127.0.0.1", "localhost"), verify=context,
                      timeout=60, headers=headers) as http:
        refused = http.post("/v1/search/text", json={"text": "effusion", "filters": {"labels": [f"{MARKER}Doe"]}})
        answered = http.post("/v1/search/text", json={"text": "effusion", "filters": {"labels": ["Effusion"]}})
    assert refused.status_code == 400 and answered.status_code == 200, (refused.text, answered.text)
    lines = {item["request_id"]: item for item in map(json.loads, _raw_lines(secured_gateway.audit_log)[-50:])}
    assert MARKER not in json.dumps(lines[refused.headers["x-request-id"]])
    assert lines[refused.headers["x-request-id"]]["queries"][0]["filters"]["labels_count"] == 1
    assert lines[answered.headers["x-request-id"]]["queries"][0]["filters"] == {"labels": ["Effusion"]}


@pytest.mark.triton
def test_the_gateways_own_log_verifies_whole(secured_gateway, capsys):
    assert cxr(["audit", "verify", str(secured_gateway.audit_log)]) == 0, capsys.readouterr().err
    assert "intact" in capsys.readouterr().out
