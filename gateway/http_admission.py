"""What the gateway's HTTP side checks before it reads a request's body, and how it records the
refusals it makes itself.

The gRPC interceptors see a call only once its body has been read and parsed into a message, so
without these checks anyone could make the gateway buffer and parse bodies without a credential.
Before a body is read, in this order:
1. an Authorization header over MAX_CREDENTIAL_BYTES is refused (431);
2. an address throttled for its refused calls is refused (429; the buckets of admission.RefusalLimiter);
3. with auth on, the credential (401) and the route's scope (403) are checked by the gRPC side's own
   Authenticator and scope table; the credential is the Authorization header, else (with single
   sign-on on) the session cookie the page's sign-in set (gateway/http_login.py), sent on as a bearer;
4. the caller's rate bucket (admission's) must hold a token (429): looked at only, the gRPC call takes it;
5. an upload (an image, a batch) waits up to UPLOAD_WAIT_S for one of `max_concurrent_uploads` slots,
   else 429: at most that many large bodies are held at once.
A refusal before the body is read ends the connection, so the unread body is never received.
What the HTTP side refuses itself (these, and bad JSON, 413, 415, an unknown parameter or /v1 route,
a foreign Origin) is audited and charged as the gRPC side would: to the principal's bucket when the
credential was valid, else to the address's refusal bucket (its rate bucket without auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass

from cxr.errors import UnauthenticatedError
from gateway import audit_records, auth, sessions
from gateway.admission import THROTTLED, RateLimiter
from gateway.audit_log import AuditLog
from gateway.http_errors import Problem

log = logging.getLogger("cxr.gateway.http")

MAX_CREDENTIAL_BYTES = 8192  # a JWT with many scopes is ~2 KB; gRPC refuses metadata over 8 KB anyway
UPLOAD_WAIT_S = 5.0
CLIENT_CERT_STATE = "client_cert"  # per-connection state set by gateway.http_server's protocol
REASONS = {401: "unauthenticated", 403: "permission_denied", 421: "permission_denied"}  # else "bad_request"


@dataclass
class Caller:
    """Who sent an HTTP request, as the gRPC side would name them."""

    peer: str  # 'ipv4:10.2.0.7:51544', as grpc writes a peer
    subject: str  # the TLS client certificate's subject, or ""
    principal: str = ""  # once the credential was checked (auth on)

    @classmethod
    def of(cls, scope) -> Caller:
        host, port = scope.get("client") or ("unknown", 0)
        peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        return cls(peer, scope.get("state", {}).get(CLIENT_CERT_STATE, ""))

    @property
    def address(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    @property
    def key(self) -> str:
        """What the rate buckets know this caller by: the principal, or the address without auth."""
        return self.principal or self.address


class FrontDoor:
    def __init__(self, authenticator: auth.Authenticator | None, rates: RateLimiter, refusals: RateLimiter | None,
                 audit_log: AuditLog | None = None, metrics=None, max_uploads: int = 8,
                 session_cookie: str | None = None):
        self.authenticator = authenticator
        self.session_cookie = session_cookie  # the sign-in session's cookie; None: single sign-on off
        self.rates = rates
        self.refusals = refusals
        self.audit = audit_log
        self.metrics = metrics  # gateway.metrics.GatewayMetrics, or None
        self.max_uploads = max_uploads
        self._uploads = asyncio.Semaphore(max_uploads)

    def session(self, request) -> str | None:
        """The sign-in session in the request's cookie, when single sign-on is on and it holds one."""
        value = request.cookies.get(self.session_cookie) if self.session_cookie else None
        return value if value and sessions.is_session(value) and value.isascii() and value.isprintable() else None

    def credential(self, request) -> str | None:
        """The Authorization header, else the session cookie's credential as a bearer: a token pasted into
        the page (a service account's) goes before a signed-in session."""
        header = request.headers.get("authorization")
        if header is not None:
            return header
        session = self.session(request)
        return f"Bearer {session}" if session else None

    def admit(self, request, rpc: str, caller: Caller) -> None:
        """Checks 1-4 above; raises Problem (not yet recorded) for a caller the gateway would refuse."""
        credential = self.credential(request)
        if credential is not None and len(credential) > MAX_CREDENTIAL_BYTES:
            raise Problem(431, f"the Authorization header is over {MAX_CREDENTIAL_BYTES} bytes: send one bearer token",
                          headers={"Connection": "close"})
        if self.refusals is not None:
            _within(self.refusals.wait(caller.address), "too many refused calls from this address", THROTTLED)
        if self.authenticator is not None:
            caller.principal = self._principal(credential, rpc)
        _within(self.rates.wait(caller.key), "rate limit reached", "rate_limit")

    def _principal(self, credential: str | None, rpc: str) -> str:
        unauthenticated = {"WWW-Authenticate": "Bearer", "Connection": "close"}
        if credential is None or not (credential.isascii() and credential.isprintable()):
            raise Problem(401, "send 'Authorization: Bearer <token>' (a JWT or an API key) in plain ASCII",
                          "UNAUTHENTICATED", unauthenticated)
        try:
            principal = self.authenticator.verify(auth.bearer_token((("authorization", credential),)))
        except UnauthenticatedError as exc:
            raise Problem(401, str(exc), "UNAUTHENTICATED", unauthenticated) from exc
        except Exception as exc:  # noqa: BLE001 - as the gRPC side: a credential no check foresaw is refused
            log.error("credential check failed unexpectedly (%s); refused", type(exc).__name__)
            raise Problem(401, "the credential could not be verified", "UNAUTHENTICATED", unauthenticated) from exc
        scope = auth.METHOD_SCOPES.get(auth.RETRIEVAL + rpc)
        if scope and scope not in principal.scopes:
            raise Problem(403, f"{rpc} needs the scope {scope!r}; {principal.id} has {sorted(principal.scopes)}",
                          "PERMISSION_DENIED", {"Connection": "close"})
        return principal.id

    def admit_sign_in(self, caller: Caller) -> None:
        """A step of a sign-in (to the provider and back) costs a token of its address's bucket: each one
        holds a pending sign-in or makes a call to the provider. An address throttled for refusals waits."""
        if self.refusals is not None:
            _within(self.refusals.wait(caller.address), "too many refused calls from this address", THROTTLED)
        _within(self.rates.take(caller.address), "too many sign-ins from this address", "rate_limit")

    @contextlib.asynccontextmanager
    async def upload_slot(self, uploads: bool):
        """One of max_concurrent_uploads slots for the time an upload is read and answered."""
        if not uploads:
            yield
            return
        try:
            await asyncio.wait_for(self._uploads.acquire(), UPLOAD_WAIT_S)
        except TimeoutError:
            raise Problem(429, f"{self.max_uploads} uploads are being received, the gateway's limit "
                               "(max_concurrent_uploads): retry in a few seconds", "RESOURCE_EXHAUSTED",
                          {"Retry-After": "2", "Connection": "close"}, "uploads") from None
        try:
            yield
        finally:
            self._uploads.release()

    def refused(self, caller: Caller, rpc: str, problem: Problem, started: float) -> None:
        """Record a refusal made on the HTTP side: a request id, a token of the caller's bucket, the
        metrics and an audit line."""
        problem.request_id = uuid.uuid4().hex
        if caller.principal or self.refusals is None:
            self.rates.take(caller.key)
        else:
            self.refusals.take(caller.address)
        reason = problem.reason or REASONS.get(problem.http, "bad_request")
        if self.metrics is not None:
            self.metrics.rpcs.labels(rpc or "HTTP", problem.code.name).inc()
            self.metrics.rejected.labels(reason).inc()
        if self.audit is not None:
            self._audit(caller, rpc, problem, started)

    def _audit(self, caller: Caller, rpc: str, problem: Problem, started: float) -> None:
        line = audit_records.describe_http_refusal(problem.request_id, caller.principal, caller.subject, caller.peer,
                                                   rpc, problem.code, problem.http, started, self.audit)
        try:
            if problem.reason == THROTTLED:
                self.audit.append_throttled(caller.address, line)
            else:
                self.audit.append(line)
        except OSError as exc:  # the refusal is answered anyway: it gives nothing away
            log.error("audit log %s not written (%s): HTTP refusal %s", self.audit.path, exc, problem.request_id)


def _within(wait_s: float, what: str, reason: str) -> None:
    if wait_s:
        raise Problem(429, f"{what}: retry in {math.ceil(wait_s)} s", "RESOURCE_EXHAUSTED",
                      {"Retry-After": str(max(1, math.ceil(wait_s))), "Connection": "close"}, reason)
