"""`create_backup`: every item the settings name, in the order that keeps records consistent with what they
record, into a new owner-only folder that appears only once complete, with what was left out and why."""

import datetime as dt
from dataclasses import replace

import pytest

from cxr.backup import create, create_backup
from cxr.backup.manifest import BackupError


def test_a_backup_holds_every_item_in_order_owner_only(stack, tmp_path):
    folder, manifest = create_backup(stack.settings, stack.root, tmp_path / "backups")
    assert folder.parent == tmp_path / "backups" and folder.name.startswith("cxr-backup-")
    assert [(i.kind, i.name) for i in manifest.items] == [
        ("pacs_cache", "m.dicomweb"), ("report_ledger", "m"), ("audit_log", "audit.log"),
        ("api_keys", "api_keys.json"), ("faiss_index", "m"), ("settings", "cxr.toml")]
    assert manifest.of_kind("report_ledger")[0].details == {"reports": 1}
    audit = manifest.of_kind("audit_log")[0].details
    assert audit["lines"] == 400 and audit["rotated"] == ["audit.log.000001", "audit.log.000002"]
    assert audit["key"] == "audit.log.key"
    assert {"audit/audit.log.key", "keys/api_keys.json", "settings/cxr.toml", "reports/m.sqlite",
            "caches/m.dicomweb/follow.json", "indexes/m/changes/generation.json"} <= set(manifest.files)
    modes = {p.stat().st_mode & 0o777 for p in folder.rglob("*")}
    assert modes == {0o600, 0o700} and folder.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [folder.name]  # no .partial left
    assert any("make export" in entry["why"] for entry in manifest.left_out if entry["what"] == "model_repository")
    assert manifest.milvus is None


def test_backups_taken_in_the_same_second_get_their_own_folders(stack, tmp_path):
    now = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.timezone.utc)
    first, _ = create_backup(stack.settings, stack.root, tmp_path / "backups", now=now)
    second, _ = create_backup(stack.settings, stack.root, tmp_path / "backups", now=now)
    assert (first.name, second.name) == ("cxr-backup-20261203T080000Z", "cxr-backup-20261203T080000Z-2")


def test_a_failed_backup_leaves_nothing_that_looks_like_one(stack, tmp_path, monkeypatch):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(create, "_faiss_indexes", broken)
    with pytest.raises(OSError, match="disk full"):
        create_backup(stack.settings, stack.root, tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []


def test_a_backup_inside_what_it_copies_is_refused(stack):
    with pytest.raises(BackupError, match="is inside .*indexes, which the backup copies: give a folder elsewhere"):
        create_backup(stack.settings, stack.root, stack.settings.index_dir / "backups")


def test_hidden_folders_and_partial_builds_are_left_out(stack, tmp_path):
    index_dir = stack.settings.index_dir
    for leftover in (".m-staging-x", ".m-retired", ".cxr-serving-host-1"):
        (index_dir / leftover).mkdir()
        (index_dir / leftover / "manifest.json").write_text("{}")
    (index_dir / "m.partial").mkdir()
    (index_dir / "m.partial" / "chunk-000000.npz").write_bytes(b"x")
    _, manifest = create_backup(stack.settings, stack.root, tmp_path / "backups")
    assert not [name for name in manifest.files if ".m-" in name or "serving" in name or "partial" in name]


def test_a_milvus_index_is_recorded_not_copied(stack, tmp_path):
    settings = replace(stack.settings, index_backend="milvus", milvus_uri="http://milvus:19530")
    _, manifest = create_backup(settings, stack.root, tmp_path / "backups")
    assert manifest.milvus["uri"] == "http://milvus:19530" and "milvus-backup" in manifest.milvus["copy_with"]
    assert all(alias.startswith("cxr_") for alias in manifest.milvus["aliases"].values())


def test_a_checkout_with_nothing_to_back_up_gives_an_empty_backup(tmp_path):
    from cxr.settings import load_settings

    _, manifest = create_backup(load_settings(tmp_path / "empty", {}), tmp_path / "empty", tmp_path / "backups")
    assert manifest.items == [] and manifest.files == {}
