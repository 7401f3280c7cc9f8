"""The audit chain: lines linked by HMAC with the log's key across rotation and restarts, each file numbered
in its first line; verify names the first bad line or the missing file."""

import hashlib
import json

import pytest

from gateway import audit_chain, audit_log


def _write(path, count, max_bytes=audit_log.DEFAULT_MAX_BYTES, **fields):
    log = audit_log.AuditLog(path, max_bytes=max_bytes)
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
    fault, _ = _verify([path], path)
    assert fault is not None and fault.line == line and words in fault.reason, fault


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
    fault, checked = _verify([path], path)
    assert fault is not None and fault.line == line and "edited" in fault.reason, fault
    assert checked == line - 1


def test_a_log_with_its_first_lines_cut_is_refused(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 10)
    path.write_text("".join(_lines(path)[3:]))
    fault, _ = _verify([path], path)
    assert fault is not None and "lines before seq 3 are missing" in fault.reason, fault


def _rotated_log(tmp_path, count=40):
    path = tmp_path / "audit.log"
    _write(path, count, max_bytes=1000)
    assert len(audit_chain.rotated(path)) >= 3
    return path


def test_a_dropped_rotated_file_is_named(tmp_path):
    path = _rotated_log(tmp_path)
    files = _files(path)
    fault, _ = _verify([f for f in files if f.name != "audit.log.000002"], path)
    assert fault is not None and fault.file.name == "audit.log.000003" and "file 2" in fault.reason, fault
    assert "give every rotated file" in fault.reason


def test_the_live_file_alone_is_not_the_log(tmp_path):
    path = _rotated_log(tmp_path)
    fault, _ = _verify([path], path)
    assert fault is not None and "lines before seq" in fault.reason and "give every rotated file" in fault.reason


def test_a_renamed_file_is_caught(tmp_path):
    path = _rotated_log(tmp_path)
    files = _files(path)
    (tmp_path / "audit.log.000002").unlink()
    (tmp_path / "audit.log.000003").rename(tmp_path / "audit.log.000002")
    fault, _ = _verify(_files(path), path)
    assert fault is not None and "renamed" in fault.reason, fault
    assert len(files) == len(_files(path)) + 1


def test_a_file_from_another_log_is_caught(tmp_path):
    path = _rotated_log(tmp_path / "a")
    other = _rotated_log(tmp_path / "b")
    (tmp_path / "a" / "audit.log.000002").write_bytes((tmp_path / "b" / "audit.log.000002").read_bytes())
    fault, _ = _verify(_files(path), path)
    assert fault is not None and fault.file.name == "audit.log.000002" and "another log" in fault.reason
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
    fault, _ = _verify([path], path)
    assert fault is not None and "before audit chains were keyed" in fault.reason, fault
    with pytest.raises(audit_chain.AuditError, match="earlier version"):
        audit_log.AuditLog(path)
