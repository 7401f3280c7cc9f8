"""Private copies of files that others may rewrite: what a process maps cannot shrink under it.

A memory-mapped file truncated in place (`truncate -s`, a `cp` over it) kills the process that
next reads a lost page with SIGBUS; overwritten in place, it changes what the process reads. So an
index is served from copies of its files in a folder only this process's user can open (0700),
checked there, mapped from there, and unlinked at once: the mappings keep the data until the last
reader lets go, then the kernel frees the space, and nothing is left to remove. A process killed
while copying leaves its folder behind; the next copy made in the same place removes the folders
of this host's dead processes (host and pid are in the folder's name).

Copies are made in the kernel (os.copy_file_range: on XFS or Btrfs a reflink, no bytes moved),
in `copy_dir` when given (the `index_copy_dir` setting), else beside the index (the same
filesystem), else, where the index folder is read-only (Kubernetes mounts indexes read-only),
in the temp dir, said in the log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cxr.errors import ResourceExhaustedError

PREFIX = ".cxr-serving-"
CHUNK_BYTES = 1 << 20
# Where the kernel cannot copy between these two files (another filesystem on kernels from 5.19,
# an old kernel, a filesystem without the call), the bytes go through this process.
NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
# A copy may not take the last 2 % of its filesystem: a full disk fails the audit log's writes, and
# with them every call.
RESERVE_FRACTION = 0.02
log = logging.getLogger("cxr.private_copy")


class NoRoomError(ResourceExhaustedError):
    """The place for a private copy has not room enough for it."""


@contextlib.contextmanager
def copied(directory: Path, names: Iterable[str], copy_dir: Path | None = None) -> Iterator[Path]:
    """A private folder holding copies of `names` (relative to `directory`), removed on leaving:
    map what is needed from it inside the block."""
    names = list(names)
    need = sum((directory / name).stat().st_size for name in names)
    folder = make_folder(directory, copy_dir)
    try:
        check_room(folder, need)
        for name in names:
            target = folder / name
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                copy_file(directory / name, target)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoRoomError(_no_room(folder.parent, need, "ran out of room")) from exc
                raise
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_room(folder: Path, need: int) -> None:
    """Refuse a copy that would leave its filesystem all but full (on XFS or Btrfs the reflink
    would cost nothing, but the space cannot be known in advance)."""
    usage = shutil.disk_usage(folder)
    if need > usage.free - RESERVE_FRACTION * usage.total:
        raise NoRoomError(_no_room(folder.parent, need, f"has {usage.free / 1e6:,.0f} MB free"))


def _no_room(place: Path, need: int, state: str) -> str:
    return (f"{place} {state} for a private copy of the index ({need / 1e6:,.0f} MB, and "
            f"{RESERVE_FRACTION:.0%} of the filesystem kept free): make room there or set index_copy_dir "
            "(CXR_INDEX_COPY_DIR) to a folder with room for the whole index")


def copy_file(source: Path, target: Path) -> None:
    """`source` as it is now into the new file `target`: in the kernel where it can, else read and written."""
    with source.open("rb") as src, target.open("xb") as dst:
        left = os.fstat(src.fileno()).st_size
        try:
            while left > 0 and (done := os.copy_file_range(src.fileno(), dst.fileno(), left)):
                left -= done
        except OSError as exc:
            if exc.errno not in NO_KERNEL_COPY:
                raise
            shutil.copyfileobj(src, dst, CHUNK_BYTES)  # both offsets are where the kernel stopped


def places(directory: Path, copy_dir: Path | None) -> list[Path]:
    """Where a copy of `directory` may go, in order of preference."""
    return [copy_dir] if copy_dir else [directory.parent, Path(tempfile.gettempdir())]


def make_folder(directory: Path, copy_dir: Path | None = None) -> Path:
    """A new 0700 folder for a copy of `directory`, in the first of `places` that takes one."""
    prefix = f"{owned_prefix(PREFIX)}{directory.name}-"
    first, *fallback = places(directory, copy_dir)
    try:
        return _new_folder(first, prefix)
    except OSError as exc:
        if not fallback:
            raise
        log.info("%s cannot hold a private copy of the index (%s): copying it to %s instead; set "
                 "index_copy_dir (CXR_INDEX_COPY_DIR) to a folder with room for the whole index",
                 first, exc.strerror or type(exc).__name__, fallback[0])
        return _new_folder(fallback[0], prefix)


def _new_folder(place: Path, prefix: str) -> Path:
    place.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=place))
    remove_leftovers(place)
    return folder


def owned_prefix(prefix: str) -> str:
    """A folder name prefix naming this host and process, for `remove_leftovers` to clean up after a crash."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-"


def remove_leftovers(place: Path, prefix: str = PREFIX) -> None:
    """Remove the folders named with `prefix` (owned_prefix) that this host's dead processes left in `place`."""
    mine = f"{prefix}{socket.gethostname()}-"
    with contextlib.suppress(OSError):
        for entry in place.iterdir():
            pid = entry.name[len(mine):].split("-", 1)[0]
            if entry.name.startswith(mine) and pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
