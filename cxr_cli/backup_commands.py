"""The backup commands of `cxr` (cxr.backup; docs/backup.md):

    cxr backup create --to DIR [--without-audit-key]
    cxr backup verify DIR
    cxr backup restore --from DIR [--to-root ROOT] [--force] [--keep-settings] [--audit-key FILE]

The CLI adds what the ground cannot do: the audit chain of a backup checked with the gateway's verifier.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cxr.backup import create_backup, restore_backup, verify
from cxr.backup.manifest import AUDIT_LOG, FAISS_INDEX, REPORT_LEDGER, Item, Manifest
from cxr.settings import Settings


def cmd_backup_create(args, settings: Settings) -> int:
    folder, manifest = create_backup(settings, Path.cwd(), args.to, audit_key=not args.without_audit_key)
    print(f"backed up to {folder} in {manifest.seconds:.1f} s: {len(manifest.files)} files, "
          f"{_size(manifest.size)}")
    for item in manifest.items:
        print(f"  {_describe(item)}")
    print("left out: " + "; ".join(f"{entry['what']} ({entry['why']})" for entry in manifest.left_out))
    if manifest.milvus:
        print(f"the Milvus index at {manifest.milvus['uri']} is not in it: {manifest.milvus['copy_with']}")
    return _check_audit(folder, manifest)


def cmd_backup_verify(args, settings: Settings) -> int:
    manifest, problems = verify(args.dir)
    for problem in problems:
        print(f"BROKEN: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"intact: {len(manifest.files)} files, {_size(manifest.size)}, taken {manifest.created} by "
          f"cxr-retrieval {manifest.version}")
    return _check_audit(args.dir, manifest)


def cmd_backup_restore(args, settings: Settings) -> int:
    root = args.to_root or Path.cwd()
    restored = restore_backup(args.source, root, dict(os.environ), force=args.force,
                              keep_settings=args.keep_settings, audit_key=args.audit_key)
    for placement in restored.placements:
        print(f"  {_describe(placement.item)} -> {placement.target}")
    for path in restored.set_aside:
        print(f"  set aside: {path}")
    audit = restored.settings.audit_log
    print(f"restored {args.source} under {root}; start the gateway there"
          + (f", and check the audit chain with `cxr audit verify {audit}`" if audit else ""))
    return 0


def _describe(item: Item) -> str:
    details = item.details
    if item.kind == FAISS_INDEX:
        return (f"index {item.name}: {details.get('count')} images in the build, generation "
                f"{details.get('generation')} ({details.get('pending')} rows committed since)")
    if item.kind == REPORT_LEDGER:
        return f"report ledger {item.name}: {details.get('reports')} reports"
    if item.kind == AUDIT_LOG:
        key = "its key" if details.get("key") else "NOT its key (--without-audit-key: keep it apart)"
        files = len(details.get("rotated", [])) + 1
        return f"audit log {item.name}: {details.get('lines')} lines in {files} file(s), {key}"
    return f"{item.kind.replace('_', ' ')} {item.name}"


def _check_audit(folder: Path, manifest: Manifest) -> int:
    """The backed-up audit log's chain, checked with its key where the backup holds it."""
    from gateway.audit_chain import log_files, read_key, verify as verify_chain

    for item in manifest.of_kind(AUDIT_LOG):
        if not item.details.get("key"):
            print("audit chain: not checked (the key is not in the backup)")
            continue
        live = folder / item.path / item.details["live"]
        files = log_files([live]) if live.exists() else log_files(sorted((folder / item.path).glob(f"{live.name}.*")))
        fault, checked = verify_chain(files, read_key(folder / item.path / item.details["key"]))
        if fault is not None:
            print(f"audit chain BROKEN after {checked} good lines: {fault}", file=sys.stderr)
            return 1
        print(f"audit chain: intact, {checked} lines")
    return 0


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"


def add_commands(sub) -> None:
    backup = sub.add_parser("backup", help="back up what must survive (indexes, caches, report ledgers, the audit "
                                           "log and its key, API keys, cxr.toml), verify a backup, restore one")
    commands = backup.add_subparsers(dest="backup_command", required=True)
    create = commands.add_parser("create", help="a consistent copy, taken while the gateway and followers run, "
                                                "into DIR/cxr-backup-<UTC time>/ with a manifest of checksums")
    create.add_argument("--to", type=Path, required=True, help="where backups go (another disk or a mount shipped "
                                                                "off the host), not inside index_dir")
    create.add_argument("--without-audit-key", action="store_true",
                        help="leave the audit log's HMAC key out (its SHA-256 is recorded): for backups stored where "
                             "the key must not be; restore then needs --audit-key")
    create.set_defaults(func=cmd_backup_create)

    check = commands.add_parser("verify", help="check every file of a backup against its manifest, and its audit "
                                               "chain; exit 1 naming what differs")
    check.add_argument("dir", type=Path, help="a cxr-backup-<time> folder")
    check.set_defaults(func=cmd_backup_verify)

    restore = commands.add_parser("restore", help="verify a backup, then put it where the settings of the target "
                                                  "root say (the backup's cxr.toml, CXR_* variables)")
    restore.add_argument("--from", dest="source", type=Path, required=True, help="a cxr-backup-<time> folder")
    restore.add_argument("--to-root", type=Path, help="the checkout or folder to restore under (default: here); "
                                                      "relative paths of the settings are taken from it")
    restore.add_argument("--force", action="store_true", help="set aside (rename, never delete) what is in the way")
    restore.add_argument("--keep-settings", action="store_true",
                         help="use the target's own cxr.toml, not the backup's (a new host's paths)")
    restore.add_argument("--audit-key", type=Path, help="the audit key kept apart from a --without-audit-key backup")
    restore.set_defaults(func=cmd_backup_restore)
