"""A small in-process OpenID provider for the unit tests of gateway/oidc.py and gateway/http_login.py: a
discovery document, a JWKS, a token and a userinfo endpoint on loopback (http.server), signing ID tokens
with an RSA key it makes; each test changes what it answers. The browser tests use a real provider
(support.oidc_provider)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "cxr-page"
CLIENT_SECRET = "s3cret"
CODE = "the-code"
ACCESS_TOKEN = "opaque-access-token"


def new_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, dict(public, kid=kid, alg="RS256", use="sig")


class FakeProvider:
    def __init__(self):
        self.key, self.jwk = new_key("k1")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.discovery = {"issuer": self.issuer, "authorization_endpoint": self.issuer + "/auth",
                          "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                          "userinfo_endpoint": self.issuer + "/me", "end_session_endpoint": self.issuer + "/logout",
                          "code_challenge_methods_supported": ["S256"]}
        self.nonce = ""  # the ID token's nonce: a test sets the pending sign-in's
        self.claims: dict = {"roles": ["radiologist"]}  # added to (or, None, removed from) the ID token's
        self.userinfo: dict = {}
        self.token_answer: dict = {}  # added to the token endpoint's answer
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, form)
        self.jwks_reads = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def id_token(self, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": "u-123", "iat": now, "exp": now + 300,
                  "nonce": self.nonce, "preferred_username": "dr.grey", **self.claims, **overrides}
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self.key, "RS256", headers={"kid": self.jwk["kid"]})

    def rotate(self) -> None:
        """A new signing key under a new kid; the old one leaves the JWKS."""
        self.key, self.jwk = new_key("k2")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _handler(provider: FakeProvider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            provider.requests.append((path, dict(self.headers), {}))
            if path == "/.well-known/openid-configuration":
                return self._answer(200, provider.discovery)
            if path == "/jwks":
                provider.jwks_reads += 1
                return self._answer(200, {"keys": [provider.jwk]})
            if path == "/me":
                if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                    return self._answer(401, {"error": "invalid_token"})
                return self._answer(200, {"sub": "u-123", **provider.userinfo})
            return self._answer(404, {"error": "not_found"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            provider.requests.append((self.path, dict(self.headers), form))
            if self.path != "/token":
                return self._answer(404, {"error": "not_found"})
            if form.get("code") != CODE:
                return self._answer(400, {"error": "invalid_grant"})
            answer = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 600,
                      "id_token": provider.id_token()}
            return self._answer(200, {**answer, **provider.token_answer})

    return Handler
