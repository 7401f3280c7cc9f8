"""The audit trail: lines chained by HMAC with the log's key across rotation and restarts, each file numbered
in its first line; verify names the first bad line or the missing file; every line bounded in size."""

import hashlib
import json

import grpc
import pytest

from cxr import registry
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import audit, audit_chain, calls

BATCH = "/cxr.retrieval.v1.Retrieval/BatchSearch"


def _write(path, count, max_bytes=audit.DEFAULT_MAX_BYTES, **fields):
    log = audit.AuditLog(path, max_bytes=max_bytes)
    for i in range(count):
        log.append({"request_id": f"r{i}", "method": "SearchByText", "status": "OK", **fields})
    log.close()


def _files(path):
    return audit_chain.log_files([path])


def _verify(files, path):
    return audit_chain.verify(files, audit_chain.read_key(audit_chain.key_file(path)))


def _first(path):
    return json.loads(path.read_text().splitlines()[0])


def test_an_intact_chain_verifies_across_rotation_and_restart(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 30, max_bytes=1000)
    _write(path, 5, max_bytes=1000)  # a restarted gateway continues the chain
    rotated = audit_chain.rotated(path)
    assert len(rotated) >= 2
    assert _verify(_files(path), path) == (None, 35)
    seqs = [json.loads(line)["seq"] for f in _files(path) for line in f.read_text().splitlines()]
    assert seqs == list(range(35))
    assert [_first(f)["file"] for f in rotated] == list(range(1, len(rotated) + 1))


def test_the_files_may_be_given_in_any_order(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 30, max_bytes=1000)
    assert _verify(list(reversed(_files(path))), path)[0] is None


def _lines(path):
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("edit, line, words", [
    (lambda lines: lines.__setitem__(4, lines[4].replace('"OK"', '"PERMISSION_DENIED"')), 5, "edited"),
    (lambda lines: lines.__setitem__(4, lines[4].replace('"prev":"', '"prev":"0')), 5, "edited"),
    (lambda lines: lines.pop(4), 5, "deleted"),
    (lambda lines: lines.insert(4, lines[2]), 5, "inserted"),
    (lambda lines: lines.__setitem__(4, "not json\n"), 5, "not an audit line"),
])
def test_verify_names_the_first_bad_line(tmp_path, edit, line, words):
    path = tmp_path / "audit.log"
    _write(path, 10)
    lines = _lines(path)
    edit(lines)
    path.write_text("".join(lines))
    problem, _ = _verify([path], path)
    assert problem is not None and problem.line == line and words in problem.reason, problem


def _rechain(lines, start, digest):
    """Recompute every prev from line `start` on with `digest(previous line)`, as an attacker would."""
    for i in range(start, len(lines)):
        item = json.loads(lines[i])
        item["prev"] = digest(lines[i - 1].rstrip("\n").encode())
        lines[i] = json.dumps(item, separators=(",", ":")) + "\n"


@pytest.mark.parametrize("digest, line", [
    (lambda line: hashlib.sha256(line).hexdigest(), 5),  # the old chain's own links: the edited line is named
    (lambda line: audit_chain.link(b"a key of the attacker's", line), 6),  # the first line whose prev changed
], ids=["sha256", "another key"])
def test_an_edit_rechained_without_the_key_is_caught(tmp_path, digest, line):
    path = tmp_path / "audit.log"
    _write(path, 10)
    lines = _lines(path)
    lines[4] = lines[4].replace('"OK"', '"PERMISSION_DENIED"')
    _rechain(lines, 5, digest)
    path.write_text("".join(lines))
    problem, checked = _verify([path], path)
    assert problem is not None and problem.line == line and "edited" in problem.reason, problem
    assert checked == line - 1


def test_a_log_with_its_first_lines_cut_is_refused(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 10)
    path.write_text("".join(_lines(path)[3:]))
    problem, _ = _verify([path], path)
    assert problem is not None and "lines before seq 3 are missing" in problem.reason, problem


def _rotated_log(tmp_path, count=40):
    path = tmp_path / "audit.log"
    _write(path, count, max_bytes=1000)
    assert len(audit_chain.rotated(path)) >= 3
    return path


def test_a_dropped_rotated_file_is_named(tmp_path):
    path = _rotated_log(tmp_path)
    files = _files(path)
    problem, _ = _verify([f for f in files if f.name != "audit.log.000002"], path)
    assert problem is not None and problem.file.name == "audit.log.000003" and "file 2" in problem.reason, problem
    assert "give every rotated file" in problem.reason


def test_the_live_file_alone_is_not_the_log(tmp_path):
    path = _rotated_log(tmp_path)
    problem, _ = _verify([path], path)
    assert problem is not None and "lines before seq" in problem.reason and "give every rotated file" in problem.reason


def test_a_renamed_file_is_caught(tmp_path):
    path = _rotated_log(tmp_path)
    files = _files(path)
    (tmp_path / "audit.log.000002").unlink()
    (tmp_path / "audit.log.000003").rename(tmp_path / "audit.log.000002")
    problem, _ = _verify(_files(path), path)
    assert problem is not None and "renamed" in problem.reason, problem
    assert len(files) == len(_files(path)) + 1


def test_a_file_from_another_log_is_caught(tmp_path):
    path = _rotated_log(tmp_path / "a")
    other = _rotated_log(tmp_path / "b")
    (tmp_path / "a" / "audit.log.000002").write_bytes((tmp_path / "b" / "audit.log.000002").read_bytes())
    problem, _ = _verify(_files(path), path)
    assert problem is not None and problem.file.name == "audit.log.000002" and "another log" in problem.reason
    assert other.exists()


def test_rotation_numbers_survive_archiving_the_rotated_files(tmp_path):
    """An operator moves rotated files to the archive: the next file must not reuse number 1."""
    path = _rotated_log(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    moved = [f.rename(archive / f.name) for f in audit_chain.rotated(path)]
    _write(path, 40, max_bytes=1000)
    assert audit_chain.rotated(path)[0].suffix == f".{len(moved) + 1:06d}"
    assert _verify([*moved, *_files(path)], path)[0] is None


def test_a_long_last_line_does_not_stop_the_gateway_continuing(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 3, note="x" * 200_000)
    _write(path, 2)
    assert _verify([path], path) == (None, 5)


def test_a_log_of_the_unkeyed_version_is_named_as_such(tmp_path):
    path = tmp_path / "audit.log"
    audit_chain.load_key(path)
    prev, lines = audit_chain.GENESIS, []
    for seq in range(3):
        line = json.dumps({"seq": seq, "status": "OK", "prev": prev}, separators=(",", ":"))
        lines.append(line + "\n")
        prev = hashlib.sha256(line.encode()).hexdigest()
    path.write_text("".join(lines))
    problem, _ = _verify([path], path)
    assert problem is not None and "before audit chains were keyed" in problem.reason, problem
    with pytest.raises(audit.AuditError, match="earlier version"):
        audit.AuditLog(path)


def test_a_line_holds_no_query_text_only_its_hmac(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.log")
    request = pb.SearchByTextRequest(text="left pleural effusion, patient Jane Doe", top_k=5,
                                     filters=pb.Filters(labels=["Effusion"]))
    described = audit.describe_request("/cxr.retrieval.v1.Retrieval/SearchByText", request, log, answered=True)
    assert "Jane" not in json.dumps(described)
    (query,) = described["queries"]
    assert query == {"kind": "text", "model": "", "top_k": 5, "hmac": log.hmac(request.text.encode()),
                     "filters": {"labels": ["Effusion"]}}
    assert (tmp_path / "audit.log.key").stat().st_mode & 0o077 == 0


SEARCH_TEXT = "/cxr.retrieval.v1.Retrieval/SearchByText"
GET_STUDY = "/cxr.retrieval.v1.Retrieval/GetStudy"


@pytest.mark.parametrize("model, shown", [("", True), (registry.list_models()[0], True), ("Jane Doe", False)])
def test_a_model_is_written_only_when_registered(tmp_path, model, shown):
    log = audit.AuditLog(tmp_path / "audit.log")
    (query,) = audit.describe_request(SEARCH_TEXT, pb.SearchByTextRequest(text="x", model=model), log)["queries"]
    if shown:
        assert query["model"] == model and "model_hmac" not in query
    else:
        assert "model" not in query and query["model_hmac"] == log.hmac(model.encode()) and query["model_chars"] == 8


@pytest.mark.parametrize("uid, shown", [("1.2.840.113619.2.55.3", True), ("x1", True), ("Jane Doe", False),
                                        ("1" * 65, False)])
def test_a_study_uid_is_written_only_when_short_and_of_a_uid_charset(tmp_path, uid, shown):
    log = audit.AuditLog(tmp_path / "audit.log")
    (query,) = audit.describe_request(GET_STUDY, pb.GetStudyRequest(study_uid=uid), log, answered=True)["queries"]
    assert (query.get("study_uid") == uid) is shown
    assert ("study_uid_hmac" in query) is not shown


def test_filter_values_of_a_call_not_answered_are_hmacs(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.log")
    labels = ["Effusion", "Jane Doe"]
    request = pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=labels))
    (query,) = audit.describe_request(SEARCH_TEXT, request, log, answered=False)["queries"]
    assert query["filters"] == {"labels_hmac": log.hmac(json.dumps(labels, separators=(",", ":")).encode()),
                                "labels_count": 2}


def test_filter_values_of_an_answered_call_are_listed_once_and_counted(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.log")
    labels = ["Effusion"] * 1000 + [f"L{i}" for i in range(40)] + ["x" * 65]
    request = pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=labels))
    (query,) = audit.describe_request(SEARCH_TEXT, request, log, answered=True)["queries"]
    listed = query["filters"]["labels"]
    assert listed[0] == "Effusion" and len(listed) == audit.FILTER_VALUES_LISTED
    assert query["filters"]["labels_count"] == len(labels)


def test_a_batch_records_at_most_a_valid_batch_of_queries_and_a_total(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.log")
    request = pb.BatchSearchRequest(queries=[pb.SearchQuery(text=pb.SearchByTextRequest(text=str(i)))
                                             for i in range(5000)])
    described = audit.describe_request(BATCH, request, log)
    assert len(described["queries"]) == audit.MAX_BATCH_QUERIES == 256
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
    log = audit.AuditLog(tmp_path / "audit.log")
    line = audit.describe_call(call, _Context("ipv6:[" + "f" * 240 + "]:65535", escaped), request, status,
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
    assert len(answered) < audit.MAX_LINE_BYTES and len(refused) < audit.MAX_REFUSED_LINE_BYTES
    for line in (answered, refused):
        assert b"mmmm" not in line and json.loads(line)["query_count"] == 300
    assert b"\\u0001" not in refused  # a refused call's filter values are not written


def test_a_second_writer_is_refused(tmp_path):
    first = audit.AuditLog(tmp_path / "audit.log")
    with pytest.raises(audit.AuditError, match="its own audit_log"):
        audit.AuditLog(tmp_path / "audit.log")
    first.close()


def test_a_damaged_last_line_stops_the_gateway_from_continuing_the_chain(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 3)
    path.write_text(path.read_text() + '{"seq": 3, "trunc')
    with pytest.raises(audit.AuditError, match="damaged line"):
        audit.AuditLog(path)


def test_throttled_lines_are_one_per_key_per_period_and_count_those_left_out(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.log")
    written = [log.append_throttled("ipv4:10.0.0.9", {"status": "RESOURCE_EXHAUSTED"}, now=t / 10) for t in range(25)]
    assert [seq is not None for seq in written].count(True) == 3  # at 0, 1.0 and 2.0 s
    assert log.append_throttled("ipv4:10.0.0.8", {"status": "RESOURCE_EXHAUSTED"}, now=2.45) is not None  # its own
    log.flush_throttled(now=2.5)  # within the period: nothing yet
    log.flush_throttled(now=3.0)  # the 4 left out since 2.0 s: the last of them, counting 3 before it
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [line.get("suppressed", 0) for line in lines] == [0, 9, 9, 0, 3]
    assert len(lines) + sum(line.get("suppressed", 0) for line in lines) == 25 + 1  # every call accounted for
