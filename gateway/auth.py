"""Identity and scopes: one interceptor checks `authorization: Bearer <token>` before any handler runs.

A token is a JWT from the hospital's identity provider (RS256 or ES256, keys from a JWKS file or
URL; issuer, audience, expiry and not-before checked with a small clock skew), an API key of a
service account (gateway/api_keys.py) or the session of a clinician signed in on the search page
(gateway/sessions.py, which the page's cookie holds). `METHOD_SCOPES` says which scope each RPC needs; a method
missing from it is refused, so a new RPC cannot slip in unprotected. Health stays open for load
balancers; reflection needs a valid token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt

from cxr.errors import FailedPreconditionError, UnauthenticatedError
from gateway import api_keys, calls, sessions

log = logging.getLogger("cxr.gateway.auth")

RETRIEVAL = calls.RETRIEVAL_PREFIX  # short, for the table below
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"
PUBLIC = None  # no token needed
ANY_SCOPE = ""  # a valid token, whatever its scopes
METHOD_SCOPES: dict[str, str | None] = {
    RETRIEVAL + "SearchByText": "search",
    RETRIEVAL + "SearchByImage": "search",
    RETRIEVAL + "BatchSearch": "search",
    RETRIEVAL + "GetStudy": "studies",  # reports are patient data
    RETRIEVAL + "GetThumbnail": "studies",  # pixels are patient data too (burned-in names, dates)
    RETRIEVAL + "GetSearchOptions": "search",  # filter values and the model's demo flag, for search forms
    RETRIEVAL + "ListModels": "admin",  # what is served, where, how large
    RETRIEVAL + "DeleteStudy": "admin",  # administrators' deletions from an index
    RETRIEVAL + "DeleteImage": "admin",
    calls.HEALTH_PREFIX + "Check": PUBLIC,
    calls.HEALTH_PREFIX + "Watch": PUBLIC,
    REFLECTION + "ServerReflectionInfo": ANY_SCOPE,
}
# Search answers carry the reports of their hits and ids that can name a patient (file names, accession
# numbers, UIDs); only a principal with the `studies` scope gets them: for the others the service answers
# with opaque ids and no report (gateway.hits.redact).
PATIENT_DATA_SCOPE = "studies"
JWT_ALGORITHMS = ("RS256", "ES256")
CLOCK_SKEW_S = 30
JWKS_REFRESH_S = 300.0
JWKS_UNKNOWN_KID_REFRESH_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0
DEFAULT_MAX_TTL_S = 24 * 3600.0


class AuthError(UnauthenticatedError):
    """The credential is missing, malformed, expired, revoked or not ours."""


class AuthConfigError(FailedPreconditionError):
    """Auth is on but its settings are incomplete or unreadable."""


@dataclass(frozen=True)
class Principal:
    id: str  # JWT or sign-in subject, or API key id
    kind: str  # "jwt", "api_key" or "session"
    scopes: frozenset[str]


class JwksKeys:
    """Signing keys by key id, from a JWKS file (re-read when it changes) or URL (re-fetched every
    JWKS_REFRESH_S, or sooner when a token names an unknown key, in the background)."""

    def __init__(self, source: str):
        self.source = source
        self.is_url = source.startswith(("https://", "http://"))
        self._stamp: object = None
        self._fetched = 0.0
        self._lock = threading.Lock()
        self._refreshing = False
        self._keys = self._load()

    def _load(self) -> dict[str, jwt.PyJWK]:
        try:
            if self.is_url:
                with urllib.request.urlopen(self.source, timeout=JWKS_FETCH_TIMEOUT_S) as answer:  # noqa: S310
                    document = json.load(answer)
                self._fetched = time.monotonic()
            else:
                path = Path(self.source)
                self._stamp = path.stat().st_mtime_ns
                document = json.loads(path.read_text())
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise AuthConfigError(f"cannot read the JWKS {self.source}: {exc}; set jwt_jwks to the identity "
                                  "provider's JWKS file or URL (`cxr certs dev DIR` writes a development one)") from exc
        return {key.key_id or "": key for key in keys}

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh():
            try:
                self._keys = self._load()
            except AuthConfigError as exc:
                self._fetched = time.monotonic()  # try again after a period, not on every call
                log.error("%s; keeping the keys fetched before", exc)
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, daemon=True, name="jwks-refresh").start()

    def get(self, key_id: str | None) -> jwt.PyJWK | None:
        if self.is_url:
            if time.monotonic() - self._fetched > JWKS_REFRESH_S:
                self._refresh_in_background()
        else:
            try:
                if Path(self.source).stat().st_mtime_ns != self._stamp:
                    self._keys = self._load()
            except (OSError, AuthConfigError) as exc:
                log.error("cannot re-read the JWKS %s (%s); keeping the keys read before", self.source, exc)
        keys = self._keys
        if key_id is None and len(keys) == 1:
            return next(iter(keys.values()))
        key = keys.get(key_id or "")
        if key is None and self.is_url and time.monotonic() - self._fetched > JWKS_UNKNOWN_KID_REFRESH_S:
            self._refresh_in_background()  # the provider may have rotated its keys
        return key


class JwtVerifier:
    def __init__(self, keys: JwksKeys, issuer: str, audience: str, clock_skew_s: float = CLOCK_SKEW_S,
                 max_ttl_s: float = DEFAULT_MAX_TTL_S):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.clock_skew_s = clock_skew_s
        self.max_ttl_s = max_ttl_s

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("the bearer token is neither an API key nor a well-formed JWT") from exc
        if header.get("alg") not in JWT_ALGORITHMS:
            raise AuthError(f"the JWT's algorithm (alg) is not accepted; use one of {list(JWT_ALGORITHMS)}")
        key = self.keys.get(header.get("kid"))
        if key is None:
            raise AuthError(f"JWT signed with an unknown key: the JWKS of {self.issuer} holds no key with its kid")
        if key.algorithm_name != header["alg"]:
            # Checked here, not left to the library: given a key of the other family it raises TypeError.
            raise AuthError(f"the JWT says {header['alg']} but its key (kid {key.key_id!r}) is a {key.algorithm_name} "
                            "key: the token was not signed by this identity provider's key")
        claims = self._claims(token, key)
        self._check_lifetime(claims)
        return Principal(str(claims["sub"]), "jwt", frozenset(_scopes(claims)))

    def _claims(self, token: str, key: jwt.PyJWK) -> dict:
        try:
            return jwt.decode(token, key, algorithms=[key.algorithm_name], audience=self.audience, issuer=self.issuer,
                              leeway=self.clock_skew_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the JWT has expired: get a new token") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("the JWT is not valid yet (nbf/iat in the future): check the client's clock") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(f"the JWT is for another audience; this gateway accepts {self.audience!r}") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError(f"the JWT is from another issuer; this gateway accepts {self.issuer!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("the JWT signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"the JWT is not valid: {exc}") from exc
        except (TypeError, ValueError) as exc:  # a claim or key the library did not expect: no traceback per call
            raise AuthError("the JWT cannot be verified (malformed claims or key)") from exc

    def _check_lifetime(self, claims: dict) -> None:
        """A token valid for years is a stolen credential that never ends: refuse lifetimes above max_ttl_s."""
        try:
            start = float(claims.get("iat", time.time()))
            lifetime = float(claims["exp"]) - start
        except (TypeError, ValueError) as exc:
            raise AuthError("the JWT's exp or iat is not a number (seconds since 1970)") from exc
        if lifetime > self.max_ttl_s + self.clock_skew_s:
            raise AuthError(f"the JWT is valid for {lifetime / 3600:.1f} h, longer than this gateway accepts "
                            f"({self.max_ttl_s / 3600:g} h, jwt_max_ttl_s): ask the identity provider for "
                            "shorter-lived tokens")


def _scopes(claims: dict) -> list[str]:
    """OAuth 2 `scope` (space separated) or `scp` (a list or a string, as Entra ID and Okta send it)."""
    value = claims.get("scope", claims.get("scp", ""))
    return value.split() if isinstance(value, str) else [str(v) for v in value]


class Authenticator:
    """API keys, JWTs and sign-in sessions, any of which may be off."""

    def __init__(self, jwts: JwtVerifier | None, keys: api_keys.ApiKeyStore | None,
                 signed_in: sessions.SessionStore | None = None):
        if jwts is None and keys is None and signed_in is None:
            raise AuthConfigError("auth = token needs jwt_jwks (with jwt_issuer, jwt_audience), api_keys_file or "
                                  "single sign-on (oidc_issuer)")
        self.jwts = jwts
        self.keys = keys
        self.sessions = signed_in

    def verify(self, token: str) -> Principal:
        if sessions.is_session(token):
            return self._session(token)
        if api_keys.key_id(token) is not None:
            if self.keys is None:
                raise AuthError("API keys are not accepted by this gateway (no api_keys_file)")
            try:
                record = self.keys.verify(token)
            except api_keys.ApiKeyError as exc:
                raise AuthError(str(exc)) from exc
            return Principal(record.id, "api_key", frozenset(record.scopes))
        if self.jwts is None:
            raise AuthError("JWTs are not accepted by this gateway (no jwt_jwks): use an API key")
        return self.jwts.verify(token)

    def _session(self, token: str) -> Principal:
        if self.sessions is None:
            raise AuthError("sign-in sessions are not accepted by this gateway (no oidc_issuer): send a token")
        identity = self.sessions.get(token)
        if identity is None:
            raise AuthError("the sign-in session has ended (expired, signed out, or sealed with another key: a gateway "
                            "restarted without oidc_session_key, or replicas given different ones): sign in again")
        return Principal(identity.subject, "session", identity.scopes)


def bearer_token(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("the authorization header must read 'Bearer <token>'")
            return token.strip()
    raise AuthError("no credential: send the metadata 'authorization: Bearer <token>' (a JWT or an API key)")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid credential, PERMISSION_DENIED without the method's scope."""

    def __init__(self, authenticator: Authenticator, method_scopes: dict[str, str | None] = METHOD_SCOPES):
        self.authenticator = authenticator
        self.method_scopes = method_scopes

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method not in self.method_scopes:
            return calls.refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                                 f"{details.method} is not in the gateway's scope table: refused", "permission_denied")
        scope = self.method_scopes[details.method]
        if scope is PUBLIC:
            return handler
        try:
            principal = self.authenticator.verify(bearer_token(details.invocation_metadata))
        except AuthError as exc:
            return calls.refusal(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc), "unauthenticated")
        except Exception as exc:  # noqa: BLE001 - a credential no check foresaw is refused, never UNKNOWN
            log.error("credential check failed unexpectedly (%s); refused", type(exc).__name__)
            return calls.refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "the credential could not be verified",
                                 "unauthenticated")
        call = calls.current()
        if call is not None:
            call.principal, call.scopes = principal.id, principal.scopes
            call.sees_patient_data = PATIENT_DATA_SCOPE in principal.scopes
        if scope and scope not in principal.scopes:
            return calls.refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                                 f"{calls.method_name(details.method)} needs the scope {scope!r}; "
                                 f"{principal.id} has {sorted(principal.scopes)}", "permission_denied",
                                 metadata={"scope": scope})
        return handler


def authenticator_from(settings, signed_in: sessions.SessionStore | None = None) -> Authenticator:
    """The authenticator `auth = token` asks for, from the settings' JWKS and API key file, and the
    search page's sign-in sessions when single sign-on is on."""
    jwts = None
    if settings.jwt_jwks:
        if not (settings.jwt_issuer and settings.jwt_audience):
            raise AuthConfigError("jwt_jwks is set: set jwt_issuer and jwt_audience too (what the identity "
                                  "provider writes in iss and aud)")
        jwts = JwtVerifier(JwksKeys(settings.jwt_jwks), settings.jwt_issuer, settings.jwt_audience,
                           max_ttl_s=settings.jwt_max_ttl_s)
    keys = api_keys.ApiKeyStore(settings.api_keys_file) if settings.api_keys_file else None
    return Authenticator(jwts, keys, signed_in)
