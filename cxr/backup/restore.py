"""`cxr backup restore`: a backup put back where the settings of the target checkout say, after every file
was checked against the manifest; nothing is overwritten unless asked (--force), and then it is set aside,
never deleted.

The settings are those of the target root: its environment (CXR_*), and the backup's cxr.toml as if it were
already at the root (or, with keep_settings, the root's own). A relative path in them is taken from the
root, so a restore into a fresh folder lays everything out inside it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cxr.audit_files import key_file, rotated, rotated_name, rotation_number
from cxr.backup.copying import Changed, make_folder, remove, stream, sync_tree
from cxr.backup.manifest import (
    API_KEYS,
    AUDIT_LOG,
    FAISS_INDEX,
    PACS_CACHE,
    REPORT_LEDGER,
    SETTINGS,
    BackupDamagedError,
    BackupError,
    Item,
    Manifest,
    verify,
)
from cxr.files import sync_directory
from cxr.settings import CONFIG_FILE, Settings, load_settings

SET_ASIDE = ".before-restore-"
SQLITE_SIDECARS = ("-wal", "-shm")  # a database's WAL files: an old WAL must never meet a restored database


@dataclass(frozen=True)
class Placement:
    """Where one item goes: `target` (a folder or a file) and each backup file's place."""

    item: Item
    target: Path
    files: dict[str, Path]  # path in the backup -> path restored
    whole_folder: bool  # the target is a folder placed in one rename
    also: tuple[Path, ...] = ()  # what must not be left beside it (an old WAL, rotated files of another log)


@dataclass(frozen=True)
class Restored:
    settings: Settings
    placements: list[Placement]
    set_aside: list[Path]


def restore_backup(backup: Path, root: Path, environ: dict | None = None, force: bool = False,
                   keep_settings: bool = False, audit_key: Path | None = None) -> Restored:
    """Verify `backup`, then restore it under the settings of `root` (see the module's docstring)."""
    manifest, problems = verify(backup)
    if problems:
        raise BackupDamagedError(f"{backup} does not match its manifest, so nothing was restored: "
                                 + "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                                              else ""))
    settings = _target_settings(backup, manifest, root, environ, keep_settings)
    placements = [_place(item, manifest, settings, root) for item in manifest.items
                  if not (item.kind == SETTINGS and keep_settings)]
    key = _audit_key(manifest, audit_key)
    _refuse_running_gateway(settings)
    occupied = [path for placement in placements for path in _occupied(placement)]
    if occupied and not force:
        raise BackupError("restoring would overwrite " + ", ".join(map(str, occupied))
                          + ": restore into a fresh root (--to-root DIR), or pass --force to set these aside "
                            f"(renamed .<name>{SET_ASIDE}<time> beside them, never deleted)")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    set_aside = [_set_aside(path, stamp) for path in occupied]
    for placement in placements:
        _put(backup, manifest, placement)
    if key is not None:
        _put_key(key, settings.audit_log)
    return Restored(settings, placements, set_aside)


def _target_settings(backup: Path, manifest: Manifest, root: Path, environ: dict | None,
                     keep_settings: bool) -> Settings:
    items = manifest.of_kind(SETTINGS)
    config = None if keep_settings or not items else (backup / items[0].path).read_text()
    return load_settings(root, environ, config=config)


def _place(item: Item, manifest: Manifest, settings: Settings, root: Path) -> Placement:
    inside = {name[len(item.path) + 1:]: name for name in manifest.files if name.startswith(item.path + "/")}
    if item.kind in (FAISS_INDEX, PACS_CACHE):
        target = settings.index_path(item.name) if item.kind == FAISS_INDEX else settings.index_dir / item.name
        return Placement(item, target, {name: target / relative for relative, name in inside.items()}, True)
    if item.kind == REPORT_LEDGER:
        target = settings.reports_path(item.name)
        return Placement(item, target, {item.path: target}, False,
                         tuple(target.with_name(target.name + s) for s in SQLITE_SIDECARS))
    if item.kind == API_KEYS:
        target = _needed(settings.api_keys_file, "API keys", "api_keys_file", "CXR_API_KEYS_FILE")
        return Placement(item, target, {item.path: target}, False)
    if item.kind == SETTINGS:
        return Placement(item, root / CONFIG_FILE, {item.path: root / CONFIG_FILE}, False)
    if item.kind == AUDIT_LOG:
        live = _needed(settings.audit_log, "an audit log", "audit_log", "CXR_AUDIT_LOG")
        return Placement(item, live, {name: _audit_target(relative, item, live) for relative, name in inside.items()},
                         False, (*rotated(live), key_file(live)))
    raise BackupError(f"the backup holds a {item.kind!r}, which this version of cxr-retrieval does not know: "
                      "restore it with the version that wrote it")


def _needed(path: Path | None, what: str, setting: str, variable: str) -> Path:
    if path is None:
        raise BackupError(f"the backup holds {what} but the target's settings give no {setting}: set it (cxr.toml "
                          f"or {variable}) to where it should go, then restore again")
    return path


def _audit_target(name: str, item: Item, live: Path) -> Path:
    """The live file, a rotated file (renumbered under the target's name) or the key."""
    if name == item.details.get("key"):
        return key_file(live)
    number = rotation_number(Path(name))
    return live if number is None else rotated_name(live, number)


def _audit_key(manifest: Manifest, given: Path | None) -> bytes | None:
    """The key given for a backup taken without it, checked against the digest the backup records."""
    logs = manifest.of_kind(AUDIT_LOG)
    if not logs or logs[0].details.get("key") or not logs[0].details.get("key_sha256"):
        return None
    if given is None:
        raise BackupError("the backup holds the audit log without its key (taken with --without-audit-key): give "
                          "the key kept apart with --audit-key FILE; without it the restored log cannot be verified "
                          "or continued")
    key = given.read_bytes()
    if hashlib.sha256(key).hexdigest() != logs[0].details["key_sha256"]:
        raise BackupError(f"{given} is not the key of the backed-up audit log (its SHA-256 differs from the one "
                          "the backup records): give that log's key")
    return key


def _refuse_running_gateway(settings: Settings) -> None:
    """A gateway holds its audit log locked (gateway.audit_log): restoring under it would fork the chain."""
    if settings.audit_log is None or not settings.audit_log.is_file():
        return
    descriptor = os.open(settings.audit_log, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise BackupError(f"a gateway is writing the audit log {settings.audit_log}: stop it (and any follower) "
                          "before restoring") from exc
    finally:
        os.close(descriptor)


def _occupied(placement: Placement) -> list[Path]:
    """What is in the way: a non-empty folder or file where the item goes, or anything that must not stay
    beside it."""
    targets = [placement.target] if placement.whole_folder else list(placement.files.values())
    found = [path for path in dict.fromkeys(targets)
             if path.is_dir() and any(path.iterdir()) or path.is_file() and path.stat().st_size > 0]
    return found + [path for path in placement.also if path not in found and (path.exists() or path.is_symlink())]


def _set_aside(path: Path, stamp: str) -> Path:
    aside = path.with_name(f".{path.name}{SET_ASIDE}{stamp}")
    path.rename(aside)
    return aside


def _put(backup: Path, manifest: Manifest, placement: Placement) -> None:
    """Copy an item's files into place, each checked against the manifest as it is copied."""
    if placement.whole_folder:
        make_folder(placement.target.parent)
        staging = placement.target.with_name(f".{placement.target.name}.restoring")
        remove(staging)
        _copy_all(backup, manifest, {name: staging / target.relative_to(placement.target)
                                     for name, target in placement.files.items()})
        sync_tree(staging)
        if placement.target.is_dir():
            placement.target.rmdir()  # empty: what was in it is set aside
        staging.rename(placement.target)
        sync_directory(placement.target.parent)
        return
    for name, target in placement.files.items():
        staged = target.with_name(f".{target.name}.restoring")
        staged.unlink(missing_ok=True)
        _copy_all(backup, manifest, {name: staged})
        staged.rename(target)
        sync_directory(target.parent)


def _copy_all(backup: Path, manifest: Manifest, files: dict[str, Path]) -> None:
    for name, target in sorted(files.items()):
        try:
            stream(backup / name, target, manifest.files[name])
        except Changed as exc:
            raise BackupDamagedError(f"{backup / name} changed while it was restored: check the backup's storage, "
                                     "then restore again") from exc


def _put_key(key: bytes, live: Path) -> None:
    path = key_file(live)
    make_folder(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
