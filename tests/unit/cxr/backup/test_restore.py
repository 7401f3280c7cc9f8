"""`restore_backup`: checked first, then laid out as the target's settings say (the backup's cxr.toml and the
environment, relative to the root); what is in the way is refused, or with force set aside, never deleted;
the restored audit log goes on and its chain verifies across the restore."""

import json
import sqlite3

import pytest

from cxr.backup import BackupDamagedError, BackupError, create_backup, restore_backup
from cxr.reports.ledger import ReportLedger
from gateway import api_keys
from gateway.audit_chain import verify_log
from gateway.audit_log import AuditLog
from support.backup_stack import MODEL


@pytest.fixture
def backup(stack, tmp_path):
    folder, _ = create_backup(stack.settings, stack.root, tmp_path / "backups")
    return folder


def _ledger(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM reports ORDER BY seq").fetchall()


def test_a_restore_into_a_fresh_root_serves_the_same_and_the_audit_chain_runs_on(stack, backup, tmp_path):
    restored = restore_backup(backup, tmp_path / "fresh", {})
    settings = restored.settings
    assert settings.index_dir == tmp_path / "fresh" / "data" / "indexes"
    assert stack.search(settings) == stack.search()
    assert _ledger(settings.reports_path(MODEL)) == _ledger(stack.settings.reports_path(MODEL))
    with ReportLedger(settings.reports_path(MODEL)) as ledger:  # the restored ledger takes new reports
        assert ledger.last_seq() == 1
    assert api_keys.ApiKeyStore(settings.api_keys_file).verify(stack.key).owner == "pacs-router"
    assert (settings.index_dir / "m.dicomweb" / "follow.json").read_text() == json.dumps({"orthanc_seq": 7})
    assert (tmp_path / "fresh" / "cxr.toml").read_text() == (stack.root / "cxr.toml").read_text()
    assert verify_log(settings.audit_log) == (None, 400)
    stack.audit(50, settings)  # a gateway on the restored root appends to the restored log
    assert verify_log(settings.audit_log) == (None, 450)
    assert restored.set_aside == []


def test_the_environment_lays_out_the_restore(stack, backup, tmp_path):
    elsewhere = tmp_path / "big-disk" / "indexes"
    restored = restore_backup(backup, tmp_path / "fresh", {"CXR_INDEX_DIR": str(elsewhere)})
    assert restored.settings.index_dir == elsewhere and (elsewhere / MODEL / "manifest.json").is_file()
    assert stack.search(restored.settings) == stack.search()


def test_existing_targets_are_refused_and_with_force_set_aside(stack, backup, tmp_path):
    root = tmp_path / "fresh"
    restore_backup(backup, root, {})
    before = sorted(str(p) for p in root.rglob("*"))
    with pytest.raises(BackupError) as refused:
        restore_backup(backup, root, {})
    for name in ("data/indexes/m.dicomweb", "reports/m.sqlite", "audit/audit.log", "audit.log.000001",
                 "audit.log.key", "api_keys.json", "data/indexes/m,", "cxr.toml"):
        assert name in str(refused.value)
    assert "--force to set these aside" in str(refused.value)
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing touched

    restored = restore_backup(backup, root, {}, force=True)
    assert len(restored.set_aside) == 9 and all(p.exists() and p.name.startswith(".") for p in restored.set_aside)
    assert stack.search(restored.settings) == stack.search()
    assert verify_log(restored.settings.audit_log) == (None, 400)


def test_an_old_wal_is_never_left_beside_a_restored_ledger(stack, backup, tmp_path):
    root = tmp_path / "fresh"
    wal = root / "data" / "indexes" / "reports" / "m.sqlite-wal"
    wal.parent.mkdir(parents=True)
    wal.write_bytes(b"frames of another database")
    with pytest.raises(BackupError, match="restoring would overwrite .*m.sqlite-wal"):
        restore_backup(backup, root, {})
    restored = restore_backup(backup, root, {}, force=True)
    assert [p.name.split(".before-restore-")[0] for p in restored.set_aside] == [".m.sqlite-wal"]
    assert not wal.exists() and _ledger(restored.settings.reports_path(MODEL)) == \
        _ledger(stack.settings.reports_path(MODEL))


def test_a_damaged_backup_restores_nothing(backup, tmp_path):
    (backup / "keys" / "api_keys.json").write_text("{}")
    with pytest.raises(BackupDamagedError, match="keys/api_keys.json: changed"):
        restore_backup(backup, tmp_path / "fresh", {})
    assert not (tmp_path / "fresh").exists()


def test_a_backup_without_the_audit_key_needs_it_given(stack, tmp_path):
    backup, _ = create_backup(stack.settings, stack.root, tmp_path / "backups", audit_key=False)
    with pytest.raises(BackupError, match="without its key .* give the key kept apart with --audit-key FILE"):
        restore_backup(backup, tmp_path / "fresh", {})
    (tmp_path / "wrong.key").write_text("00" * 32)
    with pytest.raises(BackupError, match="is not the key of the backed-up audit log"):
        restore_backup(backup, tmp_path / "fresh", {}, audit_key=tmp_path / "wrong.key")
    key = stack.settings.audit_log.with_name("audit.log.key")
    settings = restore_backup(backup, tmp_path / "fresh", {}, audit_key=key).settings
    assert verify_log(settings.audit_log) == (None, 400)
    assert settings.audit_log.with_name("audit.log.key").stat().st_mode & 0o777 == 0o600


def test_a_restore_under_a_running_gateway_is_refused_even_with_force(backup, tmp_path):
    settings = restore_backup(backup, tmp_path / "fresh", {}).settings
    running = AuditLog(settings.audit_log)
    try:
        with pytest.raises(BackupError, match="a gateway is writing the audit log .*: stop it"):
            restore_backup(backup, tmp_path / "fresh", {}, force=True)
    finally:
        running.close()


def test_keep_settings_restores_where_the_roots_own_settings_say(stack, backup, tmp_path):
    root = tmp_path / "new-host"
    root.mkdir()
    (root / "cxr.toml").write_text('[cxr]\nindex_dir = "vectors"\naudit_log = "trail/cxr-audit.log"\n'
                                   'api_keys_file = "keys.json"\n')
    restored = restore_backup(backup, root, {}, keep_settings=True)
    assert (root / "vectors" / MODEL / "manifest.json").is_file()
    assert sorted(p.name for p in (root / "trail").iterdir()) == [
        "cxr-audit.log", "cxr-audit.log.000001", "cxr-audit.log.000002", "cxr-audit.log.key"]
    assert verify_log(root / "trail" / "cxr-audit.log") == (None, 400)  # renamed, the chain still holds
    assert stack.search(restored.settings) == stack.search()
    assert "index_dir" in (root / "cxr.toml").read_text()


def test_a_setting_the_restore_needs_is_asked_for(backup, tmp_path):
    root = tmp_path / "new-host"
    root.mkdir()
    (root / "cxr.toml").write_text('[cxr]\napi_keys_file = "keys.json"\n')
    with pytest.raises(BackupError, match="holds an audit log but the target's settings give no audit_log: set it"):
        restore_backup(backup, root, {}, keep_settings=True)
