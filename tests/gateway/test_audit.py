"""The audit chain: lines link by SHA-256, survive rotation and restarts; verify names the first bad line."""

import json

import pytest

from gateway import audit


def _write(path, count, max_bytes=audit.DEFAULT_MAX_BYTES):
    log = audit.AuditLog(path, max_bytes=max_bytes)
    for i in range(count):
        log.append({"request_id": f"r{i}", "method": "SearchByText", "status": "OK"})
    log.close()


def _files(path):
    return [*audit._rotated(path), path]


def test_an_intact_chain_verifies_across_rotation_and_restart(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 30, max_bytes=1000)
    _write(path, 5, max_bytes=1000)  # a restarted gateway continues the chain
    assert len(audit._rotated(path)) >= 2
    problem, checked = audit.verify(_files(path))
    assert problem is None and checked == 35
    seqs = [json.loads(line)["seq"] for f in _files(path) for line in f.read_text().splitlines()]
    assert sorted(seqs) == list(range(35))


def test_the_files_may_be_given_in_any_order(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 30, max_bytes=1000)
    assert audit.verify(list(reversed(_files(path))))[0] is None


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
    problem, _ = audit.verify([path])
    assert problem is not None and problem.line == line and words in problem.reason, problem


def test_a_line_holds_no_query_text_only_its_hmac(tmp_path):
    from cxr.retrieval.v1 import retrieval_pb2 as pb

    log = audit.AuditLog(tmp_path / "audit.log")
    request = pb.SearchByTextRequest(text="left pleural effusion, patient Jane Doe", top_k=5,
                                     filters=pb.Filters(labels=["Effusion"]))
    described = audit.describe_request("/cxr.retrieval.v1.Retrieval/SearchByText", request, log)
    assert "Jane" not in json.dumps(described)
    (query,) = described["queries"]
    assert query == {"kind": "text", "model": "", "top_k": 5, "hmac": log.hmac(request.text.encode()),
                     "filters": {"labels": ["Effusion"]}}
    assert (tmp_path / "audit.log.key").stat().st_mode & 0o077 == 0


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
