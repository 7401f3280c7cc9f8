"""The search page's single sign-on: an OpenID Connect relying party (Authorization Code flow with
PKCE) of the hospital's provider.

The gateway is a confidential client held on the server (the "backend for frontend" of the OAuth
browser-app BCP): it sends the browser to the provider's authorization endpoint with a state, a nonce
and an S256 code challenge, redeems the code at the token endpoint itself (with the client secret when
it has one, and the PKCE verifier), checks the ID token (signature through PyJWT's PyJWKClient and the
discovery document's jwks_uri; iss, aud, azp, exp, iat, nonce, at_hash), reads the roles claim (from
the ID token, else from the userinfo endpoint, whose `sub` must match) and maps the roles to scopes.
The tokens stay here; the browser gets an opaque session (gateway/sessions.py).

Every call to the provider blocks (urllib, PyJWKClient): the HTTP side runs them in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import jwt

from cxr.errors import FailedPreconditionError, UnauthenticatedError, UnavailableError
from cxr.settings import Settings, role_scopes
from gateway import api_keys
from gateway.auth import CLOCK_SKEW_S, JWT_ALGORITHMS
from gateway.sessions import Identity, PendingLogin

log = logging.getLogger("cxr.gateway.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_REFRESH_S = 3600.0  # the provider's endpoints and keys' address, looked up again after this
JWKS_LIFESPAN_S = 300.0  # the key set is read again after this (a key removed stops verifying), or for a new kid
HTTP_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 1 << 20
# at_hash: the left half of the access token's hash, with the hash of the ID token's algorithm (OIDC Core 3.1.3.6).
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint", "end_session_endpoint")
AT_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


class OidcError(UnauthenticatedError):
    """A sign-in that cannot complete; `reason` is what the page is told (a word, never the details)."""

    def __init__(self, message: str, reason: str = "failed"):
        super().__init__(message)
        self.reason = reason  # failed, denied, no-role, expired


class OidcUnavailable(UnavailableError):
    """The provider cannot be reached, or answers with a server error: sign in again later."""

    reason = "unavailable"


class OidcConfigError(FailedPreconditionError):
    """The single sign-on settings, or the provider's discovery document, cannot work."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    scopes: str
    roles_claim: str
    role_scopes: dict[str, tuple[str, ...]]
    redirect_url: str  # "": <the page's origin>/auth/callback
    max_session_s: float
    ca_file: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> OidcConfig:
        mapping = role_scopes(settings.oidc_role_scopes)
        unknown = sorted({s for scopes in mapping.values() for s in scopes} - set(api_keys.SCOPES))
        if unknown:
            raise OidcConfigError(f"oidc_role_scopes names scopes {unknown} this gateway does not know: use "
                                  f"{list(api_keys.SCOPES)}")
        return cls(settings.oidc_issuer, settings.oidc_client_id, settings.oidc_client_secret, settings.oidc_scopes,
                   settings.oidc_roles_claim, mapping, settings.oidc_redirect_url, settings.jwt_max_ttl_s,
                   str(settings.oidc_ca) if settings.oidc_ca else None)

    def ssl_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise OidcConfigError(f"cannot read oidc_ca {self.ca_file} ({exc}): set it to the PEM file of the CA "
                                  "that signed the provider's certificate") from exc


@dataclass(frozen=True)
class ProviderMetadata:
    """What the discovery document says (OpenID Connect Discovery 1.0, section 3), as far as used here."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""  # RP-initiated logout, when the provider offers it
    basic_auth: bool = True  # client_secret_basic allowed (the default), else client_secret_post

    @classmethod
    def of(cls, document: dict, issuer: str) -> ProviderMetadata:
        if document.get("issuer") != issuer:
            raise OidcConfigError(f"the discovery document of {issuer} names the issuer {document.get('issuer')!r}: "
                                  "set oidc_issuer to exactly the issuer it names (a trailing slash counts)")
        missing = [name for name in ("authorization_endpoint", "token_endpoint", "jwks_uri")
                   if not isinstance(document.get(name), str)]
        if missing:
            raise OidcConfigError(f"the discovery document of {issuer} has no {', '.join(missing)}: is oidc_issuer "
                                  "an OpenID Connect provider?")
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcConfigError(f"{issuer} does not offer PKCE with S256 (code_challenge_methods_supported): turn "
                                  "it on at the provider")
        _check_endpoints(document, issuer)
        auth_methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        return cls(issuer, document["authorization_endpoint"], document["token_endpoint"], document["jwks_uri"],
                   _text(document.get("userinfo_endpoint")), _text(document.get("end_session_endpoint")),
                   "client_secret_basic" in auth_methods or "client_secret_post" not in auth_methods)


def _check_endpoints(document: dict, issuer: str) -> None:
    """Every endpoint an http(s) URL, and https when the issuer is: no downgrade by the document."""
    secure = issuer.startswith("https://")
    for name in ENDPOINTS:
        url = document.get(name)
        if url is None:
            continue
        scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("https", "http") or (secure and scheme != "https"):
            raise OidcConfigError(f"the discovery document of {issuer} gives {name} as {str(url)[:100]!r}: the "
                                  "gateway calls only https:// endpoints of an https:// issuer")


def _text(value) -> str:
    return value if isinstance(value, str) else ""


class ProviderHttp:
    """JSON over HTTPS from the provider, bounded in time and size; failures as OidcError/OidcUnavailable."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context

    def get(self, url: str, headers: dict | None = None) -> dict:
        return self._json(urllib.request.Request(url, headers=dict(headers or {}, Accept="application/json")))

    def post(self, url: str, form: dict, headers: dict | None = None) -> dict:
        body = urllib.parse.urlencode(form).encode()
        headers = dict(headers or {}, Accept="application/json",
                       **{"Content-Type": "application/x-www-form-urlencoded"})
        return self._json(urllib.request.Request(url, data=body, headers=headers, method="POST"))

    def _json(self, request: urllib.request.Request) -> dict:
        where = urllib.parse.urlsplit(request.full_url)._replace(query="").geturl()
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=self.context) as answer:  # noqa: S310
                return _document(answer.read(MAX_ANSWER_BYTES + 1), where)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, where) from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, TLS, a cut answer
            raise OidcUnavailable(f"the identity provider at {where} cannot be reached ({exc}): check oidc_issuer, "
                                  "the network and, for TLS, oidc_ca") from exc


def _document(body: bytes, where: str) -> dict:
    if len(body) > MAX_ANSWER_BYTES:
        raise OidcError(f"{where} answered over {MAX_ANSWER_BYTES} bytes: not an OpenID Connect answer")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise OidcError(f"{where} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise OidcError(f"{where} did not answer a JSON object")
    return document


def _http_error(exc: urllib.error.HTTPError, where: str) -> Exception:
    if exc.code >= 500:
        return OidcUnavailable(f"the identity provider at {where} answered HTTP {exc.code}: try again later")
    try:
        answer = json.loads(exc.read(MAX_ANSWER_BYTES))
        error = str(answer.get("error", ""))[:100]
    except (ValueError, AttributeError, OSError):
        error = ""
    hint = " (is oidc_client_secret the one the provider holds?)" if error == "invalid_client" else ""
    return OidcError(f"the identity provider at {where} refused: HTTP {exc.code} {error}{hint}")


class OidcClient:
    def __init__(self, config: OidcConfig, http: ProviderHttp | None = None, clock=time.time):
        self.config = config
        self.http = http or ProviderHttp(config.ssl_context())
        self.clock = clock
        self._metadata: ProviderMetadata | None = None
        self._fetched = 0.0
        self._keys: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def metadata(self) -> ProviderMetadata:
        """The discovery document, fetched on first use and every DISCOVERY_REFRESH_S (a provider down at the
        gateway's start does not stop it: token paste keeps working)."""
        with self._lock:
            if self._metadata is None or self.clock() - self._fetched > DISCOVERY_REFRESH_S:
                document = self.http.get(self.config.issuer.rstrip("/") + DISCOVERY_PATH)
                metadata = ProviderMetadata.of(document, self.config.issuer)
                if self._keys is None or self._keys.uri != metadata.jwks_uri:
                    # No cooldown before a new kid is looked up: ID tokens come only from the provider's own
                    # token endpoint, never from a caller, so nobody can send kids to make it fetch.
                    self._keys = jwt.PyJWKClient(metadata.jwks_uri, lifespan=JWKS_LIFESPAN_S,
                                                 timeout=HTTP_TIMEOUT_S, ssl_context=self.http.context,
                                                 cooldown_duration=0)
                self._metadata, self._fetched = metadata, self.clock()
            return self._metadata

    def authorization_url(self, login: PendingLogin) -> str:
        query = {"response_type": "code", "client_id": self.config.client_id, "redirect_uri": login.redirect_uri,
                 "scope": self.config.scopes, "state": login.state, "nonce": login.nonce,
                 "code_challenge": login.challenge, "code_challenge_method": "S256"}
        return _with_query(self.metadata().authorization_endpoint, query)

    def sign_in(self, code: str, login: PendingLogin) -> Identity:
        """Redeem `code` and check what comes back: the identity, or OidcError/OidcUnavailable."""
        tokens = self._redeem(code, login)
        claims = self.verify_id_token(tokens["id_token"], login.nonce, tokens["access_token"])
        if self.config.roles_claim.split(".", 1)[0] not in claims:
            claims = dict(self._userinfo(tokens["access_token"], claims["sub"]), **claims)
        scopes = self._scopes(claims)
        return Identity(str(claims["sub"]), _name(claims), scopes, self._ends(claims, tokens), tokens["id_token"])

    def _redeem(self, code: str, login: PendingLogin) -> dict:
        metadata = self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": login.redirect_uri,
                "code_verifier": login.verifier}
        headers = {}
        if not self.config.client_secret:
            form["client_id"] = self.config.client_id  # a public client
        elif metadata.basic_auth:
            headers["Authorization"] = _basic(self.config.client_id, self.config.client_secret)
        else:
            form.update(client_id=self.config.client_id, client_secret=self.config.client_secret)
        tokens = self.http.post(metadata.token_endpoint, form, headers)
        if not all(isinstance(tokens.get(name), str) for name in ("id_token", "access_token")):
            raise OidcError("the token endpoint's answer lacks an id_token or access_token: is 'openid' among "
                            "oidc_scopes and the client allowed the authorization_code grant?")
        if str(tokens.get("token_type", "")).lower() != "bearer":
            raise OidcError("the token endpoint answered a token_type other than Bearer")
        return tokens

    def verify_id_token(self, id_token: str, nonce: str, access_token: str = "") -> dict:
        """The ID token's claims once its signature (the provider's JWKS), iss, aud, azp, exp, iat, nonce
        and at_hash hold (OIDC Core 3.1.3.7)."""
        key = self._signing_key(id_token)
        try:
            claims = jwt.decode(id_token, key, algorithms=[key.algorithm_name], audience=self.config.client_id,
                                issuer=self.config.issuer, leeway=CLOCK_SKEW_S,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise OidcError(f"the ID token is not valid: {exc}") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if claims.get("azp", self.config.client_id) != self.config.client_id or \
                (len(audiences) > 1 and "azp" not in claims):
            raise OidcError("the ID token was issued to another party (azp): not for oidc_client_id")
        if not _same(claims.get("nonce", ""), nonce):
            raise OidcError("the ID token's nonce is not this sign-in's: a replayed or mixed-up answer")
        if "at_hash" in claims and not _same(claims["at_hash"], at_hash(access_token, key.algorithm_name)):
            raise OidcError("the ID token's at_hash does not match the access token issued with it")
        return claims

    def _signing_key(self, id_token: str) -> jwt.PyJWK:
        try:
            algorithm = jwt.get_unverified_header(id_token).get("alg")
        except jwt.PyJWTError as exc:
            raise OidcError("the ID token is not a well-formed JWT") from exc
        if algorithm not in JWT_ALGORITHMS:
            raise OidcError(f"the ID token is signed with {algorithm!r}; the gateway accepts {list(JWT_ALGORITHMS)}: "
                            "set the client's id_token_signed_response_alg at the provider")
        self.metadata()
        try:
            key = self._keys.get_signing_key_from_jwt(id_token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcUnavailable(f"the provider's keys (jwks_uri) cannot be read: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise OidcError(f"no key of the provider's JWKS verifies the ID token: {exc}") from exc
        if key.algorithm_name != algorithm:
            raise OidcError(f"the ID token says {algorithm} but its key (kid {key.key_id!r}) is a "
                            f"{key.algorithm_name} key")
        return key

    def _userinfo(self, access_token: str, subject: str) -> dict:
        endpoint = self.metadata().userinfo_endpoint
        if not endpoint:
            return {}
        claims = self.http.get(endpoint, {"Authorization": f"Bearer {access_token}"})
        if claims.get("sub") != subject:
            raise OidcError("the userinfo endpoint answered for another subject than the ID token's")
        return claims

    def _scopes(self, claims: dict) -> frozenset[str]:
        roles = roles_in(claims, self.config.roles_claim)
        scopes = frozenset(s for role in roles for s in self.config.role_scopes.get(role, ()))
        if not scopes:
            raise OidcError(f"{claims['sub']} has no role that oidc_role_scopes maps ({len(roles)} value(s) in the "
                            f"claim {self.config.roles_claim!r}, none of {sorted(self.config.role_scopes)}): give "
                            "the account a role at the provider, or check oidc_roles_claim", "no-role")
        return scopes

    def _ends(self, claims: dict, tokens: dict) -> float:
        """The session ends with the first of: the ID token, the access token, max_session_s from now."""
        now = self.clock()
        ends = [float(claims["exp"]), now + self.config.max_session_s]
        if isinstance(tokens.get("expires_in"), (int, float)):
            ends.append(now + float(tokens["expires_in"]))
        return min(ends)

    def logout_url(self, identity: Identity | None, post_logout_uri: str) -> str:
        """Where the browser goes to end its session at the provider too (OpenID Connect RP-Initiated Logout),
        or `post_logout_uri` itself when the provider has no end_session_endpoint."""
        try:
            endpoint = self.metadata().end_session_endpoint
        except (OidcError, OidcUnavailable, OidcConfigError) as exc:
            log.warning("signing out here only: %s", exc)
            return post_logout_uri
        if not endpoint:
            return post_logout_uri
        query = {"client_id": self.config.client_id, "post_logout_redirect_uri": post_logout_uri}
        if identity is not None and identity.id_token:
            query["id_token_hint"] = identity.id_token
        return _with_query(endpoint, query)


def roles_in(claims: dict, path: str) -> set[str]:
    """The values of the claim at the dotted `path`: a list, or one string of names split by spaces or commas."""
    value = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return {name for name in value.replace(",", " ").split() if name}
    if isinstance(value, list):
        return {str(name) for name in value if isinstance(name, (str, int))}
    return set()


def at_hash(access_token: str, algorithm: str) -> str:
    digest = AT_HASH.get(algorithm[-3:], hashlib.sha256)(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def _same(value, expected: str) -> bool:
    """A constant-time comparison that any value (a number, non-ASCII text) fails rather than raises on."""
    return hmac.compare_digest(str(value).encode(), expected.encode())


def _name(claims: dict) -> str:
    for claim in ("preferred_username", "name", "email", "sub"):
        if isinstance(claims.get(claim), str) and claims[claim]:
            return claims[claim][:200]
    return str(claims["sub"])


def _basic(client_id: str, secret: str) -> str:
    """client_secret_basic: both form-urlencoded, then Basic (RFC 6749 2.3.1)."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _with_query(url: str, query: dict) -> str:
    """`url` with `query` added to the query it may already have (a provider's endpoint can carry one)."""
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(query.items())
    return parts._replace(query=urllib.parse.urlencode(pairs)).geturl()
