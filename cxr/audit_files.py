"""How the audit log's files are named: the live file, its rotated files and its key.

The gateway writes `audit.log`, renames it `audit.log.000001`, `.000002`, ... at `audit_max_bytes`, and
keys its chain with `audit.log.key` (gateway.audit_log, gateway.audit_chain). Here, in the ground, since
the gateway and the backup (cxr.backup) both need to find them.
"""

from __future__ import annotations

from pathlib import Path

KEY_SUFFIX = ".key"


def rotation_number(path: Path) -> int | None:
    """1 for `audit.log.000001`; None for the live file (no six-digit number ending its name)."""
    suffix = path.suffix[1:]
    return int(suffix) if len(suffix) >= 6 and suffix.isdigit() else None


def rotated(path: Path) -> list[Path]:
    """Rotated files of the live file `path`, oldest first (`audit.log.000001`, `audit.log.000002`, ...)."""
    return sorted(p for p in path.parent.glob(f"{path.name}.*") if rotation_number(p) is not None)


def rotated_name(live: Path, number: int) -> Path:
    """Where the live file `live` goes when it rotates as file `number`."""
    return live.with_name(f"{live.name}.{number:06d}")


def key_file(path: Path) -> Path:
    """`audit.log.key` for `audit.log` and for its rotated files."""
    live = path.with_suffix("") if rotation_number(path) is not None else path
    return live.with_name(live.name + KEY_SUFFIX)
