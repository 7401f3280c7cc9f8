"""Replacing a folder as a whole, so readers see the old one or the new one, never a mix."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".complete"


def replace_directory(new: Path, old: Path) -> None:
    """Move the fully written `new` to `old`; the previous `old` is deleted only afterwards."""
    retired = old.with_name(f".{old.name}-retired")
    shutil.rmtree(retired, ignore_errors=True)
    if old.exists():
        old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)


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
