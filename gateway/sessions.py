"""Clinicians signed in through the search page's single sign-on (gateway/oidc.py), sealed into the
browser's cookies so that every gateway replica given the same key knows them.

A session is a credential, `cxrs_<sealed>`, that the browser keeps in an HttpOnly cookie
(gateway/http_login.py) and the HTTP side sends on as `authorization: Bearer`, so the one
Authenticator (gateway/auth.py) checks it like a JWT or an API key, on the HTTP side and again in the
gRPC interceptor. Sealed is AES-256-GCM under a key derived from oidc_session_key: the browser can
neither read nor alter what it holds, which names who signed in, the scopes their roles map to, when it
ends (the provider's tokens' expiry, at most jwt_max_ttl_s) and the ID token for the provider's logout;
none of the provider's other tokens leaves the gateway. A sign-in under way (the state, nonce and PKCE
verifier of one trip to the provider, a `PendingLogin`) is sealed the same way into the cookie that binds
it to the browser that started it, for PENDING_TTL_S.

Why sealed cookies rather than sessions in memory: replicas behind a Service (Kubernetes' autoscaler adds
and removes them) each answer whichever request reaches them, so the redirect back from the provider and
every later request may land on another replica than the one that opened the session. With one
oidc_session_key shared by all, any replica opens any session: no session affinity is needed (with mutual
TLS ended in the gateway, a balancer could pin a browser only by its address, which a NAT or an ingress
shares among many), and a replica that restarts or is scaled away signs nobody out. Without the key (only
on loopback: cxr.settings refuses it beyond), each process makes a key of its own, and its sessions end
when it stops.

Signing out deletes the browser's cookie, and the replica that signed it out refuses the credential until
it would have ended (`Ended`, in memory); another replica would still take a copy made before, until
then. The cookie is HttpOnly, Secure and SameSite=Strict, so such a copy needs the browser's own storage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("cxr.gateway.sessions")

PREFIX = "cxrs_"  # API keys read cxr_<id>_<secret>, JWTs have two dots: the three never collide
PENDING_TTL_S = 600.0
CLOCK_SKEW_S = 60.0  # a sign-in started on one replica and finished on another whose clock is behind
MAX_ENDED = 10_000  # sessions signed out here, remembered until they would have ended; more: the oldest is forgotten
# Browsers keep a cookie of 4096 bytes, name and attributes included: a session whose ID token would make
# it longer is sealed without it (the provider's logout is then sent the client id only).
MAX_CREDENTIAL_CHARS = 3800
VERSION = 1
KEY_INFO = b"cxr-retrieval sign-in cookies v1"  # HKDF's info: this key is for nothing else
SESSION = b"session"  # what a sealed value is for, authenticated with it: a sign-in is no session
SIGN_IN = b"sign-in"
NONCE_BYTES = 12
KEY_ID_BYTES = 4


class Sealer:
    """AES-256-GCM under a key derived (HKDF-SHA256) from a secret; what it seals names its purpose and the
    key's id, so a value sealed with another key is told apart from a forged one in the log."""

    def __init__(self, secret: bytes):
        derived = HKDF(hashes.SHA256(), 32 + KEY_ID_BYTES, None, KEY_INFO).derive(secret)
        self._aead = AESGCM(derived[:32])
        self.key_id = derived[32:]
        self._foreign: set[bytes] = set()  # key ids already logged

    @classmethod
    def of(cls, secret: str) -> Sealer:
        """The sealer of oidc_session_key: every replica given the same secret opens what the others seal."""
        return cls(secret.encode())

    @classmethod
    def private(cls) -> Sealer:
        """A key of this process's own (no oidc_session_key): what it seals ends with the process."""
        return cls(secrets.token_bytes(32))

    def seal(self, purpose: bytes, payload: dict) -> str:
        header = bytes([VERSION]) + self.key_id
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = self._aead.encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), header + purpose)
        return base64.urlsafe_b64encode(header + nonce + body).rstrip(b"=").decode("ascii")

    def open(self, purpose: bytes, sealed: str) -> dict | None:
        """What `seal(purpose, ...)` sealed with this key; None for anything else."""
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            return None
        start = 1 + KEY_ID_BYTES  # the version byte, then the key's id
        header, nonce, body = raw[:start], raw[start:start + NONCE_BYTES], raw[start + NONCE_BYTES:]
        if len(body) < 16 or header[0] != VERSION:
            return None
        if header[1:] != self.key_id:
            self._foreign_key(header[1:])
            return None
        try:
            payload = json.loads(self._aead.decrypt(nonce, body, header + purpose))
        except (InvalidTag, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def _foreign_key(self, key_id: bytes) -> None:
        """Logged once per key: replicas given different oidc_session_keys, or a restart without one. The ids
        say which key sealed it, nothing of the key."""
        if key_id not in self._foreign and len(self._foreign) < 64:
            self._foreign.add(key_id)
            log.warning("a session or sign-in sealed with another key (id %s; this gateway's is %s) was refused: "
                        "give every replica the same oidc_session_key (a gateway without one makes a new key at "
                        "each start)", key_id.hex(), self.key_id.hex())


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, and what this gateway lets them do."""

    subject: str  # the provider's `sub`: the principal the audit trail and the rate limits know
    name: str  # what the page shows: preferred_username, name or sub
    scopes: frozenset[str]
    expires_at: float  # time.time() at which the session ends
    id_token: str = field(default="", repr=False)  # the hint of an RP-initiated logout; never sent to the page

    def sealable(self) -> dict:
        return {"sub": self.subject, "name": self.name, "scopes": sorted(self.scopes), "exp": self.expires_at,
                "idt": self.id_token}

    @classmethod
    def unsealed(cls, payload: dict) -> Identity | None:
        try:
            return cls(str(payload["sub"]), str(payload["name"]), frozenset(map(str, payload["scopes"])),
                       float(payload["exp"]), str(payload.get("idt", "")))
        except (KeyError, TypeError, ValueError):
            return None


def _digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode()).digest()


def is_session(credential: str) -> bool:
    return credential.startswith(PREFIX)


class Ended:
    """Credentials this process has ended (signed-out sessions, finished sign-ins), by digest, each until the
    time it would have ended by itself; at most `limit`, the oldest forgotten first."""

    def __init__(self, clock, limit: int = MAX_ENDED):
        self.clock = clock
        self.limit = limit
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, credential: str, until: float) -> bool:
        """Remember `credential` as ended; False when it was already."""
        key, now = _digest(credential), self.clock()
        with self._lock:
            if self._until.get(key, 0.0) > now:
                return False
            self._until[key] = until
            self._until.move_to_end(key)
            while self._until and (len(self._until) > self.limit or next(iter(self._until.values())) <= now):
                self._until.popitem(last=False)
        return True

    def __contains__(self, credential: str) -> bool:
        with self._lock:
            return self._until.get(_digest(credential), 0.0) > self.clock()

    def __len__(self) -> int:
        return len(self._until)


class SessionStore:
    def __init__(self, sealer: Sealer | None = None, clock=time.time):
        self.sealer = sealer or Sealer.private()
        self.clock = clock
        self._ended = Ended(clock)

    def open(self, identity: Identity) -> str:
        """A new session for `identity`: the credential, which only the browser's cookie keeps."""
        credential = PREFIX + self.sealer.seal(SESSION, identity.sealable())
        if len(credential) > MAX_CREDENTIAL_CHARS and identity.id_token:
            return self.open(replace(identity, id_token=""))
        return credential

    def get(self, credential: str) -> Identity | None:
        """The session's identity while it lasts, else None (expired, signed out here, sealed with another key,
        or no session at all)."""
        if not is_session(credential) or credential in self._ended:
            return None
        payload = self.sealer.open(SESSION, credential[len(PREFIX):])
        identity = Identity.unsealed(payload) if payload is not None else None
        if identity is None or identity.expires_at <= self.clock():
            return None
        return identity

    def close(self, credential: str) -> Identity | None:
        """End the session (sign-out); its identity, for the provider's logout, or None."""
        identity = self.get(credential)
        if identity is not None:
            self._ended.add(credential, identity.expires_at)
        return identity


@dataclass(frozen=True)
class PendingLogin:
    """One trip to the provider: what the callback must find again (RFC 6749 10.12, RFC 7636, OIDC nonce)."""

    state: str
    nonce: str
    verifier: str  # PKCE code_verifier; the provider is sent only its S256 challenge
    redirect_uri: str
    started: float

    @classmethod
    def new(cls, redirect_uri: str, now: float) -> PendingLogin:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), redirect_uri, now)

    @classmethod
    def unsealed(cls, payload: dict) -> PendingLogin | None:
        try:
            texts = [payload[name] for name in ("state", "nonce", "verifier", "redirect_uri")]
            started = float(payload["started"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(*texts, started) if all(isinstance(t, str) and t for t in texts) else None

    @property
    def challenge(self) -> str:
        """The S256 code_challenge: BASE64URL(SHA256(verifier)), unpadded."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class PendingLogins:
    """Sign-ins under way, each sealed into the cookie of the browser that started it."""

    def __init__(self, sealer: Sealer | None = None, ttl_s: float = PENDING_TTL_S, clock=time.time):
        self.sealer = sealer or Sealer.private()
        self.ttl_s = ttl_s
        self.clock = clock
        self._finished = Ended(clock)

    def start(self, redirect_uri: str) -> tuple[PendingLogin, str]:
        """A new sign-in, and its sealed form for the browser's cookie."""
        login = PendingLogin.new(redirect_uri, self.clock())
        return login, self.sealer.seal(SIGN_IN, asdict(login))

    def finish(self, sealed: str, state: str) -> PendingLogin | None:
        """The sign-in the browser's cookie holds, when the provider's answer names its `state`, once: None
        when the cookie is not one of ours, names another state, is older than ttl_s or was finished already
        (on this replica; another would take the answer again, and the provider would refuse its code, which
        is for one use)."""
        payload = self.sealer.open(SIGN_IN, sealed) if sealed.isascii() else None
        login = PendingLogin.unsealed(payload) if payload is not None else None
        if login is None or not secrets.compare_digest(login.state.encode(), state.encode()):
            return None
        if not -CLOCK_SKEW_S <= self.clock() - login.started <= self.ttl_s:
            return None
        if not self._finished.add(sealed, login.started + self.ttl_s + CLOCK_SKEW_S):
            return None
        return login
