"""The search page's sign-in routes, under /auth, and the session cookie.

- GET /auth/session: {"sso": bool, "signedIn": bool, "user", "scopes", "expiresInS"} for the page.
- GET /auth/login: a pending sign-in (gateway.sessions), sealed into a cookie binding it to this browser,
  and a redirect to the provider's authorization endpoint (gateway.oidc).
- GET /auth/callback: the provider's answer; its state must be this browser's, its code redeems to a
  checked identity, which becomes a session: an HttpOnly cookie, then back to the page. A failure goes
  back to `/#login-error=<reason>` (a word from LOGIN_ERRORS, never the details, which the log has).
- POST /auth/logout: ends the session here and answers {"logoutUrl"}: the provider's end_session_endpoint
  (RP-initiated logout) or the page. A POST, so HttpGuard refuses one sent from another origin.

Why a cookie and not a token the page keeps: a script (an injected one included) cannot read an
HttpOnly cookie, the provider's tokens and the client secret never leave the gateway, and the page's
Content-Security-Policy stays `connect-src 'self'`. The session cookie is SameSite=Strict (no other
site's page sends it), Secure and named `__Host-` under TLS; the sign-in's own cookie is SameSite=Lax,
since it must come back on the provider's redirect, and lives ten minutes on /auth/callback only.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cxr.errors import CxrError
from cxr.settings import Settings
from gateway.http_admission import Caller, FrontDoor
from gateway.http_errors import API_HEADERS, Problem
from gateway.oidc import OidcClient, OidcConfig, OidcError
from gateway.sessions import PENDING_TTL_S, Identity, PendingLogins, SessionStore

log = logging.getLogger("cxr.gateway.login")

SESSION_COOKIE = "cxr_session"
SECURE_SESSION_COOKIE = "__Host-cxr_session"  # the browser sets it only from https, for this host, on path /
LOGIN_COOKIE = "cxr_login"
CALLBACK_PATH = "/auth/callback"
SIGN_IN = "SignIn"  # what the audit trail and the metrics call a refused sign-in step
LOGIN_ERRORS = ("failed", "denied", "no-role", "expired", "unavailable")
DENIALS = ("access_denied", "login_required", "consent_required", "interaction_required")
OFF = ("single sign-on is off on this gateway: set oidc_issuer, oidc_client_id and oidc_role_scopes "
       "(docs/security.md, Single sign-on), or send an access token")


def session_cookie(secure: bool) -> str:
    return SECURE_SESSION_COOKIE if secure else SESSION_COOKIE


class Login:
    """What the routes need: the provider, the sessions, the sign-ins under way, and whether cookies are
    Secure (TLS at the gateway, or an https redirect URL behind a proxy that ends TLS)."""

    def __init__(self, client: OidcClient, sessions: SessionStore, pending: PendingLogins, secure: bool):
        self.client = client
        self.sessions = sessions
        self.pending = pending
        self.secure = secure

    @classmethod
    def of(cls, settings: Settings, sessions: SessionStore) -> Login:
        """Sign-ins sealed with the sessions' key, so that one started here may finish on another replica."""
        secure = settings.tls or settings.oidc_redirect_url.startswith("https://")
        return cls(OidcClient(OidcConfig.of(settings)), sessions, PendingLogins(sessions.sealer), secure)

    @property
    def cookie(self) -> str:
        return session_cookie(self.secure)

    def origin(self, request: Request) -> str:
        """The page's origin as the provider knows it: oidc_redirect_url's, else the one the page was opened at."""
        configured = self.client.config.redirect_url
        parts = urllib.parse.urlsplit(configured) if configured else request.url
        return f"{parts.scheme}://{parts.netloc}"

    def redirect_uri(self, request: Request) -> str:
        return self.client.config.redirect_url or self.origin(request) + CALLBACK_PATH

    async def finish(self, request: Request) -> Identity:
        """The identity the provider's answer proves, for the browser that started this sign-in."""
        params = request.query_params
        state, cookie = params.get("state", ""), request.cookies.get(LOGIN_COOKIE, "")
        if not state or not cookie:
            raise OidcError("the answer is not this browser's sign-in (its cookie is missing: another browser, or "
                            "over ten minutes): sign in again", "expired")
        pending = self.pending.finish(cookie, state)
        if pending is None:
            raise OidcError("the answer's state is not that of this browser's sign-in, or the sign-in took over ten "
                            "minutes, was finished already or was sealed with another oidc_session_key: sign in "
                            "again", "expired")
        if "iss" in params and params["iss"] != self.client.config.issuer:  # RFC 9207: a mix-up of providers
            raise OidcError("the answer names another issuer than oidc_issuer")
        if "error" in params:
            error = re.sub(r"[^\w.-]", "?", params["error"][:64])  # the browser's text, on its way to the log
            raise OidcError(f"the provider ended the sign-in: {error}", "denied" if error in DENIALS else "failed")
        if not params.get("code"):
            raise OidcError("the provider's answer has no code")
        return await asyncio.to_thread(self.client.sign_in, params["code"], pending)


def routes(login: Login | None, door: FrontDoor) -> list[Route]:
    """The /auth routes (to mount at /auth)."""
    return [Route("/session", _session(login, door), methods=["GET"]),
            Route("/login", _start(login, door), methods=["GET"]),
            Route("/callback", _callback(login, door), methods=["GET"]),
            Route("/logout", _logout(login, door), methods=["POST"])]


def _session(login: Login | None, door: FrontDoor):
    async def session(request: Request) -> Response:
        if login is None:
            return JSONResponse({"sso": False, "signedIn": False}, headers=API_HEADERS)
        credential = door.session(request)
        identity = login.sessions.get(credential) if credential else None
        body = {"sso": True, "signedIn": identity is not None}
        if identity is not None:
            body.update(user=identity.name, scopes=sorted(identity.scopes),
                        expiresInS=max(0, int(identity.expires_at - time.time())))
        return JSONResponse(body, headers=API_HEADERS)

    return session


def _start(login: Login | None, door: FrontDoor):
    async def start(request: Request) -> Response:
        started, caller = time.monotonic(), _admitted(request, login, door)
        pending, sealed = login.pending.start(login.redirect_uri(request))
        try:
            url = await asyncio.to_thread(login.client.authorization_url, pending)
        except Exception as exc:  # noqa: BLE001 - a provider not reached, or a document it cannot use
            return _failed(request, door, caller, _known(exc), started)
        response = RedirectResponse(url, 302, headers=API_HEADERS)
        response.set_cookie(LOGIN_COOKIE, sealed, max_age=int(PENDING_TTL_S), path=CALLBACK_PATH,
                            secure=login.secure, httponly=True, samesite="lax")
        return response

    return start


def _callback(login: Login | None, door: FrontDoor):
    async def callback(request: Request) -> Response:
        started, caller = time.monotonic(), _admitted(request, login, door)
        try:
            identity = await login.finish(request)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the browser goes back to the page
            return _failed(request, door, caller, _known(exc), started)
        response = RedirectResponse("/", 303, headers=API_HEADERS)
        response.set_cookie(login.cookie, login.sessions.open(identity), path="/", secure=login.secure,
                            httponly=True, samesite="strict")  # no max_age: gone when the browser closes
        response.delete_cookie(LOGIN_COOKIE, path=CALLBACK_PATH, secure=login.secure, httponly=True)
        log.info("sign-in: %s, scopes %s, for %.0f s", identity.subject, sorted(identity.scopes),
                 identity.expires_at - time.time())
        return response

    return callback


def _logout(login: Login | None, door: FrontDoor):
    async def logout(request: Request) -> Response:
        if login is None:
            raise Problem(404, OFF, "NOT_FOUND")
        credential = door.session(request)
        identity = login.sessions.close(credential) if credential else None
        url = await asyncio.to_thread(login.client.logout_url, identity, login.origin(request) + "/")
        response = JSONResponse({"logoutUrl": url}, headers=API_HEADERS)
        response.delete_cookie(login.cookie, path="/", secure=login.secure, httponly=True, samesite="strict")
        if identity is not None:
            log.info("sign-out: %s", identity.subject)
        return response

    return logout


def _admitted(request: Request, login: Login | None, door: FrontDoor) -> Caller:
    if login is None:
        raise Problem(404, OFF, "NOT_FOUND")
    caller = Caller.of(request.scope)
    try:
        door.admit_sign_in(caller)
    except Problem as problem:
        door.refused(caller, SIGN_IN, problem, time.monotonic())
        raise
    return caller


def _known(error: Exception) -> Exception:
    """`error` when it is one of ours; else logged with its frames (not its message, which may quote
    what the provider sent) and turned into a plain failure."""
    if isinstance(error, CxrError):
        return error
    log.error("sign-in: unexpected %s\n%s", type(error).__name__, "".join(traceback.format_tb(error.__traceback__)))
    return OidcError(f"unexpected {type(error).__name__}; the frames are logged above")


def _failed(request: Request, door: FrontDoor, caller: Caller, error: Exception, started: float) -> Response:
    """Back to the page with a word for what went wrong, the details in the log. A refused sign-in is
    audited and charged to its address's refusal bucket, as a refused credential is; a provider that
    cannot be reached is not the caller's doing."""
    reason = getattr(error, "reason", "failed")
    log.warning("sign-in failed (%s): %s", reason, error)
    if reason != "unavailable":
        door.refused(caller, SIGN_IN, Problem(401, str(error), "UNAUTHENTICATED", reason="unauthenticated"), started)
    response = RedirectResponse(f"/#login-error={reason if reason in LOGIN_ERRORS else 'failed'}", 303,
                                headers=API_HEADERS)
    response.delete_cookie(LOGIN_COOKIE, path=CALLBACK_PATH, httponly=True)
    return response
