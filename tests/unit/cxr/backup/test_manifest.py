"""A backup's manifest lists every file with its size and SHA-256; verify names each file missing, changed or
not written by the backup, and refuses a folder that is no (finished) backup."""

import pytest

from cxr.backup import create_backup
from cxr.backup.manifest import MANIFEST_FILE, BackupDamagedError, BackupNotFoundError, Manifest, verify


@pytest.fixture
def backup(stack, tmp_path):
    folder, _ = create_backup(stack.settings, stack.root, tmp_path / "backups")
    return folder


def test_an_intact_backup_verifies_and_its_manifest_reads_back(backup):
    manifest, problems = verify(backup)
    assert problems == []
    assert manifest.files and all(set(entry) == {"bytes", "sha256"} for entry in manifest.files.values())
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.size == sum((backup / name).stat().st_size for name in manifest.files)


def test_verify_names_each_file_missing_changed_or_added(backup):
    index = backup / "indexes" / "m" / "index.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    (backup / "reports" / "m.sqlite").unlink()
    (backup / "audit" / "stray.txt").write_text("x")
    _, problems = verify(backup)
    assert problems == ["indexes/m/index.faiss: changed (its size or SHA-256 is not the one the manifest gives)",
                        "reports/m.sqlite: missing", "audit/stray.txt: not written by the backup"]


def test_a_folder_without_a_manifest_is_no_backup(backup, tmp_path):
    (backup / MANIFEST_FILE).unlink()
    with pytest.raises(BackupDamagedError, match="has no backup.json: not a backup, or one that did not finish"):
        verify(backup)
    (backup / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BackupDamagedError, match="not a readable backup manifest"):
        verify(backup)
    with pytest.raises(BackupNotFoundError, match="no backup at"):
        verify(tmp_path / "nowhere")
