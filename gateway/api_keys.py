"""API keys for service accounts (a PACS router, a nightly job): stored hashed, with an owner and scopes.

A key reads `cxr_<id>_<secret>`. The file (`api_keys_file`) keeps, per key, its id, owner, scopes,
creation and revocation times and the SHA-256 of the whole key; the key itself is shown once, when
it is made. SHA-256 without a salt is enough here because the secret is 256 random bits, not a
password. The gateway re-reads the file when it changes, so a revocation takes effect within a
second, without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr.errors import (
    CxrError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
)

PREFIX = "cxr_"
SCOPES = ("search", "studies", "admin")
RELOAD_PERIOD_S = 1.0
log = logging.getLogger("cxr.gateway.api_keys")


class ApiKeyError(CxrError):
    """The key file could not be read or written, or a key was not found: the family's base."""


class ApiKeyFileError(ApiKeyError, FailedPreconditionError):
    """The key file cannot be read: the operator fixes it."""


class ApiKeyRequestError(ApiKeyError, InvalidArgumentError):
    """A key asked for with no owner or unknown scopes."""


class UnknownApiKeyIdError(ApiKeyError, NotFoundError):
    """No key of that id in the file (an administrator's revocation)."""


class ApiKeyRefusedError(ApiKeyError, UnauthenticatedError):
    """A caller's key is unknown or revoked."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    owner: str
    scopes: tuple[str, ...]
    sha256: str
    created: str
    revoked: str | None = None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id inside a key of our format, or None."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX):].split("_", 1)
    return parts[0] if len(parts) == 2 and parts[0] and parts[1] else None


def check_scopes(scopes) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApiKeyRequestError(f"scopes must be one or more of {list(SCOPES)}, not {list(scopes)}")
    return tuple(dict.fromkeys(scopes))


def read(path: Path) -> dict[str, ApiKey]:
    if not path.is_file():
        return {}
    try:
        items = json.loads(path.read_text())["keys"]
        return {item["id"]: ApiKey(**dict(item, scopes=tuple(item["scopes"]))) for item in items}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApiKeyFileError(f"cannot read the API key file {path}: {exc}") from exc


def _write(path: Path, keys: dict[str, ApiKey]) -> None:
    """Replace the file in one rename, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(descriptor, "w") as f:
        json.dump({"keys": [asdict(k) for k in keys.values()]}, f, indent=2)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def add(path: Path, owner: str, scopes) -> tuple[ApiKey, str]:
    """A new key for `owner`: (its record, the key itself, to hand over once)."""
    if not owner.strip():
        raise ApiKeyRequestError("name the key's owner (--owner), e.g. the service account or team")
    keys = read(path)
    new_id = secrets.token_hex(4)
    while new_id in keys:
        new_id = secrets.token_hex(4)
    key = f"{PREFIX}{new_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(new_id, owner.strip(), check_scopes(scopes), _hash(key), _now())
    _write(path, dict(keys, **{new_id: record}))
    return record, key


def revoke(path: Path, key_id_: str) -> ApiKey:
    keys = read(path)
    if key_id_ not in keys:
        raise UnknownApiKeyIdError(f"no API key {key_id_!r} in {path}; `cxr keys list` shows them")
    record = keys[key_id_]
    if record.revoked is None:
        record = ApiKey(**dict(asdict(record), revoked=_now()))
        _write(path, dict(keys, **{key_id_: record}))
    return record


class ApiKeyStore:
    """The gateway's view of the key file, re-read when its modification time changes."""

    def __init__(self, path: Path):
        self.path = path
        self._keys = read(path)
        self._stamp = self._mtime()
        self._checked = time.monotonic()

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _reload_if_changed(self) -> None:
        if time.monotonic() - self._checked < RELOAD_PERIOD_S:
            return
        self._checked = time.monotonic()
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        try:
            self._keys, self._stamp = read(self.path), stamp
        except ApiKeyError as exc:  # a half-edited file: keep the keys we had, try again next time
            log.error("%s; still using the keys read before", exc)

    def verify(self, key: str) -> ApiKey:
        """The record of a valid, unrevoked key; ApiKeyError naming why not."""
        self._reload_if_changed()
        record = self._keys.get(key_id(key) or "")
        if record is None or not hmac.compare_digest(record.sha256, _hash(key)):
            raise ApiKeyRefusedError("unknown API key")
        if record.revoked:
            raise ApiKeyRefusedError(f"API key {record.id} was revoked at {record.revoked}")
        return record
