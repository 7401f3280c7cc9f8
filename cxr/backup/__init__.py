"""Backup and restore of what must survive a lost disk (docs/backup.md).

A backup is a folder <to>/cxr-backup-<UTC time>/ holding:

  indexes/<model>/       each FAISS index: its build and the commits made since (sources.faiss_index)
  caches/<model>.dicomweb/  each PACS build's vectors, listing and follow position (sources.pacs_cache)
  reports/<model>.sqlite each report ledger, one SQLite snapshot (copying.sqlite_snapshot)
  audit/                 the audit log, its rotated files and its key (sources.audit_log)
  keys/<file>            the API keys file
  settings/cxr.toml      the settings file, if the checkout has one
  backup.json            the manifest: every file's size and SHA-256, what was left out and why

create.py takes one while the gateway and followers run; restore.py verifies one and puts it back where the
target's settings say; manifest.py reads and verifies one.
"""

from cxr.backup.create import create_backup
from cxr.backup.manifest import BackupDamagedError, BackupError, BackupNotFoundError, Manifest, verify
from cxr.backup.restore import Restored, restore_backup

__all__ = ["BackupDamagedError", "BackupError", "BackupNotFoundError", "Manifest", "Restored", "create_backup",
           "restore_backup", "verify"]
