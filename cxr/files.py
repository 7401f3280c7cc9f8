"""Replacing a folder as a whole, so readers see the old one or the new one, never a mix, and a crash
at any moment leaves one of the two whole in place."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".complete"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def replace_directory(new: Path, old: Path) -> None:
    """Move the fully written `new` to `old`; the previous `old` is deleted only afterwards. On Linux the
    two folders trade places in one step (renameat2 RENAME_EXCHANGE); elsewhere, or on a filesystem
    without it, the old folder is renamed aside first, and `recover` puts it back after a crash between
    the two renames."""
    retired = old.with_name(f".{old.name}-retired")
    shutil.rmtree(retired, ignore_errors=True)
    if old.exists() and exchange(new, old):
        shutil.rmtree(new, ignore_errors=True)  # now the previous `old`
        return
    if old.exists():
        old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)


def recover(old: Path) -> None:
    """Put back a folder that a crash left renamed aside by replace_directory (nothing replaced it)."""
    retired = old.with_name(f".{old.name}-retired")
    if not old.exists() and retired.is_dir():
        with contextlib.suppress(OSError):  # a read-only folder, or another process did it first
            retired.rename(old)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        sync_directory(b.parent)
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def sync_directory(directory: Path) -> None:
    """Make the names in `directory` (a rename, a new file) survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or keeps what it held: written beside it, synced, renamed over it."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with staged.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)
    sync_directory(path.parent)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, written by `build(folder)` into a temporary sibling and renamed into place on
    first use; reused as it is once complete (an interrupted build is started again)."""
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    (building / COMPLETE_MARKER).touch()
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return target
