"""Clinicians signed in through the search page's single sign-on (gateway/oidc.py), held in this
gateway's memory.

A session is a 256-bit random credential, `cxrs_<secret>`, that the browser keeps in an HttpOnly
cookie (gateway/http_login.py) and the HTTP side sends on as `authorization: Bearer`, so the one
Authenticator (gateway/auth.py) checks it like a JWT or an API key, on the HTTP side and again in the
gRPC interceptor. It names who signed in, the scopes their roles map to and when it ends (the
provider's tokens' expiry, at most jwt_max_ttl_s); none of the provider's tokens reaches the browser.
The store keeps the SHA-256 of each credential, never the credential itself. Sessions end when they
expire, when their clinician signs out, and when the gateway restarts (signing in again through the
provider then takes a redirect, no password while the provider's own session lasts).

A sign-in in progress (the state, nonce and PKCE verifier of one trip to the provider) is a
`PendingLogin`, kept PENDING_TTL_S, looked up by its state and bound to the browser that started it by
a cookie holding that state.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

PREFIX = "cxrs_"  # API keys read cxr_<id>_<secret>, JWTs have two dots: the three never collide
MAX_SESSIONS = 10_000  # more: the oldest is ended (each one needs a sign-in at the provider)
MAX_PENDING = 1_000  # sign-ins under way; more: the oldest is dropped
PENDING_TTL_S = 600.0


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, and what this gateway lets them do."""

    subject: str  # the provider's `sub`: the principal the audit trail and the rate limits know
    name: str  # what the page shows: preferred_username, name or sub
    scopes: frozenset[str]
    expires_at: float  # time.time() at which the session ends
    id_token: str = field(default="", repr=False)  # the hint of an RP-initiated logout; never sent to the page


def _digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode()).digest()


def is_session(credential: str) -> bool:
    return credential.startswith(PREFIX)


class SessionStore:
    def __init__(self, max_sessions: int = MAX_SESSIONS, clock=time.time):
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[bytes, Identity] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, identity: Identity) -> str:
        """A new session for `identity`: the credential, which only the browser's cookie keeps."""
        credential = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[_digest(credential)] = identity
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return credential

    def get(self, credential: str) -> Identity | None:
        """The session's identity while it lasts, else None (an ended session is forgotten)."""
        key = _digest(credential)
        with self._lock:
            identity = self._sessions.get(key)
            if identity is not None and identity.expires_at <= self.clock():
                del self._sessions[key]
                identity = None
        return identity

    def close(self, credential: str) -> Identity | None:
        """End the session (sign-out); its identity, for the provider's logout, or None."""
        with self._lock:
            return self._sessions.pop(_digest(credential), None)

    def __len__(self) -> int:
        return len(self._sessions)


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

    @property
    def challenge(self) -> str:
        """The S256 code_challenge: BASE64URL(SHA256(verifier)), unpadded."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class PendingLogins:
    def __init__(self, ttl_s: float = PENDING_TTL_S, max_pending: int = MAX_PENDING, clock=time.time):
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        self._pending: OrderedDict[str, PendingLogin] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, redirect_uri: str) -> PendingLogin:
        login = PendingLogin.new(redirect_uri, self.clock())
        with self._lock:
            self._pending[login.state] = login
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return login

    def finish(self, state: str) -> PendingLogin | None:
        """The sign-in `state` names, once: None when unknown, finished already or older than ttl_s."""
        with self._lock:
            login = self._pending.pop(state, None)
        if login is None or self.clock() - login.started > self.ttl_s:
            return None
        return login
