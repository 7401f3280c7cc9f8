"""A backup's manifest (backup.json): what the backup holds, the size and SHA-256 of every file in it, and
what it leaves out and why. Written last: a folder without one is no backup."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxr.errors import FailedPreconditionError, NotFoundError

MANIFEST_FILE = "backup.json"
FORMAT = 1
CHUNK_BYTES = 1 << 20

# The kinds of item a backup holds; restore puts each where the settings say.
FAISS_INDEX = "faiss_index"  # <index_dir>/<model>/: build and committed changes
PACS_CACHE = "pacs_cache"  # <index_dir>/<model>.dicomweb/: a PACS build's vectors and follow position
REPORT_LEDGER = "report_ledger"  # Settings.reports_path(model)
AUDIT_LOG = "audit_log"  # audit_log, its rotated files and (unless left out) its key
API_KEYS = "api_keys"  # api_keys_file
SETTINGS = "settings"  # <root>/cxr.toml
KINDS = (PACS_CACHE, REPORT_LEDGER, AUDIT_LOG, API_KEYS, FAISS_INDEX, SETTINGS)


class BackupError(FailedPreconditionError):
    """A backup cannot be taken, or restored as asked."""


class BackupDamagedError(BackupError):
    """A backup's files are missing, changed, or not the ones its manifest lists."""


class BackupNotFoundError(NotFoundError):
    """No backup where one was named."""


@dataclass(frozen=True)
class Item:
    """One thing backed up: its kind, its name (a model, a cache folder, a file's name), where it is in the
    backup (a folder or a file, relative), and what is worth knowing of it (a generation, a count)."""

    kind: str
    name: str
    path: str
    details: dict = field(default_factory=dict)


@dataclass
class Manifest:
    created: str
    version: str  # cxr-retrieval's, which wrote it
    items: list[Item] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"bytes", "sha256"}
    left_out: list[dict] = field(default_factory=list)  # {"what", "why"}: not in any backup, on purpose
    milvus: dict | None = None  # the Milvus index's whereabouts: its data is milvus-backup's to copy
    layout: dict = field(default_factory=dict)  # where each item was taken from (restore goes by the settings)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), format=FORMAT), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if body.pop("format", None) != FORMAT:
            raise ValueError("unknown format")
        body["items"] = [Item(**item) for item in body["items"]]
        return cls(**body)

    def of_kind(self, kind: str) -> list[Item]:
        return [item for item in self.items if item.kind == kind]

    @property
    def size(self) -> int:
        return sum(entry["bytes"] for entry in self.files.values())


def checksum(path: Path) -> dict:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise BackupNotFoundError(f"no backup at {folder}: give the folder `cxr backup create` made "
                                  "(cxr-backup-<time>)")
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError as exc:
        raise BackupDamagedError(f"{folder} has no {MANIFEST_FILE}: not a backup, or one that did not finish "
                                 "(an unfinished one is named .cxr-backup-*.partial); take another") from exc
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BackupDamagedError(f"{path} is not a readable backup manifest ({type(exc).__name__}); use another "
                                 "backup") from exc


def verify(folder: Path) -> tuple[Manifest, list[str]]:
    """The manifest, and every way the folder differs from it (none: intact)."""
    manifest = read_manifest(folder)
    problems = []
    for name, expected in sorted(manifest.files.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{name}: listed outside the backup folder")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif checksum(path) != expected:
            problems.append(f"{name}: changed (its size or SHA-256 is not the one the manifest gives)")
    listed = set(manifest.files) | {MANIFEST_FILE}
    problems += [f"{name}: not written by the backup" for name in _files(folder) if name not in listed]
    return manifest, problems


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
