"""The audit log's writer: one writer per file, a damaged end stops it, floods summarised per address."""

import json

import pytest

from gateway import audit_chain, audit_log


def test_a_second_writer_is_refused(tmp_path):
    first = audit_log.AuditLog(tmp_path / "audit.log")
    with pytest.raises(audit_chain.AuditError, match="its own audit_log"):
        audit_log.AuditLog(tmp_path / "audit.log")
    first.close()


def test_a_damaged_last_line_stops_the_gateway_from_continuing_the_chain(tmp_path):
    path = tmp_path / "audit.log"
    log = audit_log.AuditLog(path)
    for _ in range(3):
        log.append({"status": "OK"})
    log.close()
    path.write_text(path.read_text() + '{"seq": 3, "trunc')
    with pytest.raises(audit_chain.AuditError, match="damaged line"):
        audit_log.AuditLog(path)


def test_throttled_lines_are_one_per_key_per_period_and_count_those_left_out(tmp_path):
    log = audit_log.AuditLog(tmp_path / "audit.log")
    written = [log.append_throttled("ipv4:10.0.0.9", {"status": "RESOURCE_EXHAUSTED"}, now=t / 10) for t in range(25)]
    assert [seq is not None for seq in written].count(True) == 3  # at 0, 1.0 and 2.0 s
    assert log.append_throttled("ipv4:10.0.0.8", {"status": "RESOURCE_EXHAUSTED"}, now=2.45) is not None  # its own
    log.flush_throttled(now=2.5)  # within the period: nothing yet
    log.flush_throttled(now=3.0)  # the 4 left out since 2.0 s: the last of them, counting 3 before it
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [line.get("suppressed", 0) for line in lines] == [0, 9, 9, 0, 3]
    assert len(lines) + sum(line.get("suppressed", 0) for line in lines) == 25 + 1  # every call accounted for
