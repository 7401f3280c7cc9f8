"""Replacing a folder as a whole, so readers see the old one or the new one, never a mix."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_directory(new: Path, old: Path) -> None:
    """Move the fully written `new` to `old`; the previous `old` is deleted only afterwards."""
    retired = old.with_name(f".{old.name}-retired")
    shutil.rmtree(retired, ignore_errors=True)
    if old.exists():
        old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)
