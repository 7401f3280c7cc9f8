"""`cxr backup create`, `verify` and `restore` as an operator runs them: in the checkout (its cxr.toml), the
backup's audit chain checked with its key, a changed file named, a restore into a fresh root, and a second
restore onto it refused."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from cxr_cli.main import main as cxr
from gateway.audit_chain import verify_log
from support.backup_stack import make_stack


@pytest.fixture
def site(tmp_path, monkeypatch):
    stack = make_stack(tmp_path / "site")
    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(stack.root)
    return stack


def _run(capsys, *argv) -> tuple[int, str]:
    code = cxr([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _backup(capsys, tmp_path, *extra):
    code, said = _run(capsys, "backup", "create", "--to", tmp_path / "backups", *extra)
    assert code == 0, said
    return next((tmp_path / "backups").iterdir()), said


def test_create_says_what_it_holds_and_checks_the_audit_chain(site, tmp_path, capsys):
    folder, said = _backup(capsys, tmp_path)
    assert f"backed up to {folder}" in said
    assert "index m: 40 images in the build, generation 2 (5 rows committed since)" in said
    assert "report ledger m: 1 reports" in said and "audit log audit.log: 400 lines in 3 file(s), its key" in said
    assert "model_repository (rebuilt from the registry and weights by `make export`" in said
    assert "audit chain: intact, 400 lines" in said


def test_verify_passes_an_intact_backup_and_names_a_changed_file(site, tmp_path, capsys):
    folder, _ = _backup(capsys, tmp_path)
    code, said = _run(capsys, "backup", "verify", folder)
    assert code == 0 and "intact: " in said and "audit chain: intact, 400 lines" in said, said
    ledger = folder / "reports" / "m.sqlite"
    ledger.write_bytes(ledger.read_bytes() + b"\0")
    code, said = _run(capsys, "backup", "verify", folder)
    assert code == 1 and "BROKEN: reports/m.sqlite: changed" in said, said


def test_verify_finds_an_audit_line_edited_in_the_backup(site, tmp_path, capsys):
    """Whoever can write the backup can make its manifest match an edit; without the key, not the chain."""
    folder, _ = _backup(capsys, tmp_path)
    log = folder / "audit" / "audit.log.000001"
    log.write_text(log.read_text().replace('"r5"', '"r6"', 1))
    manifest = json.loads((folder / "backup.json").read_text())
    manifest["files"]["audit/audit.log.000001"] = {"bytes": log.stat().st_size,
                                                   "sha256": hashlib.sha256(log.read_bytes()).hexdigest()}
    (folder / "backup.json").write_text(json.dumps(manifest))
    code, said = _run(capsys, "backup", "verify", folder)
    assert code == 1 and "audit chain BROKEN after 5 good lines" in said and "this line was edited" in said, said


def test_restore_into_a_fresh_root_then_refuse_a_second(site, tmp_path, capsys):
    folder, _ = _backup(capsys, tmp_path)
    fresh = tmp_path / "fresh"
    code, said = _run(capsys, "backup", "restore", "--from", folder, "--to-root", fresh)
    assert code == 0, said
    assert f"index m: 40 images in the build, generation 2 (5 rows committed since) -> {fresh}/data/indexes/m" in said
    assert f"cxr audit verify {fresh}/data/audit/audit.log" in said
    assert verify_log(fresh / "data" / "audit" / "audit.log") == (None, 400)
    code, said = _run(capsys, "backup", "restore", "--from", folder, "--to-root", fresh)
    assert code == 3 and "error: restoring would overwrite" in said, said  # a precondition to change: 3


def test_a_backup_without_the_key_says_so_and_restores_with_it(site, tmp_path, capsys):
    folder, said = _backup(capsys, tmp_path, "--without-audit-key")
    assert "NOT its key (--without-audit-key: keep it apart)" in said
    assert "audit chain: not checked (the key is not in the backup)" in said
    code, said = _run(capsys, "backup", "restore", "--from", folder, "--to-root", tmp_path / "fresh", "--audit-key",
                      site.settings.audit_log.with_name("audit.log.key"))
    assert code == 0, said
