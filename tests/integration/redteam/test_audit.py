"""Issue 17, defects 2 (audit half) and 13: the audit trail tried as a hostile client and a careless or
dishonest operator would.

- Flood: what a client sends (a 5 MB model name or label, a 100,000-character study uid, a batch of
  10,000 queries) adds lines under the stated bound through the real gateway (configuration B, the
  audit log on), token or none, and the client's string is never in the log; a label a user typed that
  the index does not hold (a patient's name) is not written either.
- Chain: an edited line re-chained with SHA-256 (what anyone could do before the chain was keyed), a
  log with its first lines cut, a rotated file dropped, only the live file given: `cxr audit verify`
  refuses each, naming the problem.
"""

from __future__ import annotations

import hashlib
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
from gateway import audit_log, audit_records

FIVE_MB = 5 * 2**20
MARKER = "PatientJaneRoe-"  # what a client string holds; never in the log


def _files(log):
    rotated = sorted(p for p in log.parent.glob(f"{log.name}.*") if p.suffix[1:].isdigit())
    return [*rotated, log]


def _raw_lines(log) -> list[bytes]:
    return [line for path in _files(log) if path.exists() for line in path.read_bytes().splitlines()]


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


# --- the chain, as an operator with the files but not the key could change them -----------------------

def _log(tmp_path, count=40, max_bytes=1000):
    path = tmp_path / "audit.log"
    log = audit_log.AuditLog(path, max_bytes=max_bytes)
    for i in range(count):
        log.append({"request_id": f"r{i}", "principal": "dr.nosy", "method": "GetStudy", "status": "OK",
                    "study_uids": [f"s{i}"]})
    log.close()
    return path


def _verify(capsys, *paths) -> tuple[int, str]:
    code = cxr(["audit", "verify", *map(str, paths)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_live_file_brings_its_rotated_files(tmp_path, capsys):
    path = _log(tmp_path)
    code, said = _verify(capsys, path)
    assert code == 0 and "intact: 40 lines" in said, said


def test_an_edit_rechained_with_sha256_is_caught(tmp_path, capsys):
    """Before the key, whoever could write the file could edit a line and recompute every later prev."""
    path = _log(tmp_path, count=10, max_bytes=audit_log.DEFAULT_MAX_BYTES)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace('"s4"', '"s0"')  # hide that dr.nosy saw study s4
    for i in range(5, len(lines)):
        item = json.loads(lines[i])
        item["prev"] = hashlib.sha256(lines[i - 1].encode()).hexdigest()
        lines[i] = json.dumps(item, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    code, said = _verify(capsys, path)
    assert code == 1 and "audit.log:5: this line was edited" in said, said


def test_a_log_with_its_first_lines_cut_is_refused(tmp_path, capsys):
    path = _log(tmp_path, count=10, max_bytes=audit_log.DEFAULT_MAX_BYTES)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[4:]))
    code, said = _verify(capsys, path)
    assert code == 1 and "lines before seq 4 are missing" in said, said


@pytest.mark.parametrize("dropped", ["audit.log.000001", "audit.log.000002"])
def test_a_dropped_rotated_file_is_refused(tmp_path, capsys, dropped):
    path = _log(tmp_path)
    (tmp_path / dropped).unlink()
    code, said = _verify(capsys, path)
    assert code == 1 and "are missing" in said and "give every rotated file" in said, said


def test_the_live_file_alone_is_refused(tmp_path, capsys):
    path = _log(tmp_path)
    kept = tmp_path / "kept"
    kept.mkdir()
    alone = path.rename(kept / path.name)
    (tmp_path / "audit.log.key").rename(kept / "audit.log.key")
    code, said = _verify(capsys, alone)
    assert code == 1 and "are missing" in said and "give every rotated file" in said, said


def test_verify_without_the_key_says_how_to_give_it(tmp_path, capsys):
    path = _log(tmp_path)
    key = (tmp_path / "audit.log.key").rename(tmp_path / "elsewhere.key")
    code, said = _verify(capsys, path)
    assert code == 2 and "--key" in said, said
    code, said = _verify(capsys, path, "--key", key)
    assert code == 0, said
