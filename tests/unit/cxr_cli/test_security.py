"""`cxr audit verify` against a dishonest operator (issue 17, defect 13): an edited line re-chained with
SHA-256 (what anyone could do before the chain was keyed), a log with its first lines cut, a rotated file
dropped, only the live file given, no key: it refuses each, naming the problem. The flood half of the
red-team audit tests runs through a real gateway: tests/integration/redteam/test_audit.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from cxr_cli.main import main as cxr
from gateway import audit_log


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
    assert code == 3 and "--key" in said, said  # bad input: the key is not where the log's key is looked for
    code, said = _verify(capsys, path, "--key", key)
    assert code == 0, said


def test_keys_list_json_names_each_key_without_the_key_or_its_hash(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_API_KEYS_FILE", str(tmp_path / "keys.json"))
    assert cxr(["keys", "add", "--owner", "pacs-router", "--scope", "search"]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert cxr(["keys", "list", "--json"]) == 0
    out = capsys.readouterr().out
    (listed,) = json.loads(out)["keys"]
    assert listed["owner"] == "pacs-router" and listed["scopes"] == ["search"] and listed["revoked"] is None
    assert set(listed) == {"id", "owner", "scopes", "created", "revoked"} and key.startswith(f"cxr_{listed['id']}_")
    assert key not in out and hashlib.sha256(key.encode()).hexdigest() not in out
