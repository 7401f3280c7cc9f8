"""Hostile HTTP requests for the gateway's HTTP side: bodies, JSON, multipart, headers, tokens, paths and
slow clients, as raw bytes so that what no well-behaved client library would send can be sent.

Everything is drawn from a seed, the real samples (through benchmarks.hostile) and a development PKI, so a
failing case can be made again. `make fuzz` (benchmarks/fuzz.py) and tests/integration/benchmarks/test_fuzz.py use it.
"""

from __future__ import annotations

import base64
import json
import random
import select
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from benchmarks import hostile
from cxr.dev_pki import SIGNING_KEY, SIGNING_KEY_ID, issue_token

CHUNK = 1 << 16
ROUTES = ("/v1/search/text", "/v1/search/image", "/v1/search/batch", "/v1/models", "/v1/search/options",
          "/v1/studies/00000002_000", "/v1/thumbnails/00000002_000.png")


@dataclass(frozen=True)
class HttpRequest:
    kind: str  # what is hostile about it
    data: bytes  # the whole request as sent: request line, headers, body


@dataclass
class Target:
    """Where the requests go: host, port, the TLS client context (None: plaintext) and a valid token."""

    port: int
    ssl_context: ssl.SSLContext | None
    token: str
    host: str = "localhost"


def request(method: str, path: str, headers: dict | None = None, body: bytes = b"", host: str = "localhost",
            length: int | None = None) -> bytes:
    """Raw HTTP/1.1 bytes; Content-Length is the body's unless `length` says otherwise (None in headers: left out)."""
    fields = {"Host": host, "Connection": "close", **(headers or {})}
    if body or length is not None:
        fields.setdefault("Content-Length", str(len(body) if length is None else length))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v is not None), "", ""]
    return "\r\n".join(lines).encode("latin-1", "replace") + body


def send(target: Target, data: bytes, deadline_s: float) -> tuple[int, float]:
    """(HTTP status or 0 when the connection ended without an answer, seconds). The body is sent in
    chunks while the server has not answered: a refusal before the body is read is seen, not lost."""
    started = time.monotonic()
    try:
        with _connect(target, deadline_s) as sock:
            early = b""
            for offset in range(0, len(data), CHUNK):
                if offset and (early := _early_answer(sock, deadline_s)):
                    break  # answered before the body was all sent (401, 413, ...): stop sending
                sock.sendall(data[offset:offset + CHUNK])
            return _status(early + _read(sock, started + deadline_s)), time.monotonic() - started
    except (OSError, ssl.SSLError):
        return 0, time.monotonic() - started


def _early_answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server has answered so far, without waiting. A readable TLS socket may hold only a session
    ticket (TLS 1.3 sends them after the handshake), so the answer is read, not inferred from select."""
    if not select.select([sock], [], [], 0)[0]:
        return b""
    sock.setblocking(False)
    try:
        return sock.recv(CHUNK)
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    finally:
        sock.settimeout(timeout)


def _connect(target: Target, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=timeout)
    return target.ssl_context.wrap_socket(sock, server_hostname=target.host) if target.ssl_context else sock


def _read(sock: socket.socket, deadline: float) -> bytes:
    answer = b""
    while b"\r\n" not in answer or not _complete(answer):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(CHUNK)
        except (TimeoutError, OSError, ssl.SSLError):
            break
        if not chunk:
            break
        answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = answer.partition(b"\r\n\r\n")[2]
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False  # no length: the server closes when done


def _status(answer: bytes) -> int:
    """The final status of an answer (an interim 100 Continue is passed over); 0 for none."""
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = answer.partition(b"\r\n\r\n")[2]
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and answer.startswith(b"HTTP/1.") and parts[1].isdigit() else 0


class HostileHttpRequests:
    """Draws hostile HTTP requests (and a share of valid ones) from a seed."""

    def __init__(self, target: Target, samples: Path, pki: Path, issuer: str, audience: str, seed: int):
        self.rng = random.Random(seed)
        self.target = target
        self.images = hostile.HostileImages(samples, seed)
        self.png = (samples / "00000001_000.png").read_bytes()
        signing = serialization.load_pem_private_key((pki / SIGNING_KEY).read_bytes(), None)
        now = int(time.time())
        claims = {"sub": "fuzz", "iss": issuer, "aud": audience, "iat": now, "exp": now + 3600, "scope": "search"}
        self.tokens = {
            "valid": target.token, "none": None, "garbage": "x" * self.rng.choice([1, 100, 8000]),
            "no scope": issue_token(pki / SIGNING_KEY, "fuzz", ["admin"], 3600, issuer, audience),
            "expired": jwt.encode(dict(claims, exp=now - 60), signing, "ES256", headers={"kid": SIGNING_KEY_ID}),
            "100 years": jwt.encode(dict(claims, exp=now + 100 * 365 * 86400), signing, "ES256",
                                    headers={"kid": SIGNING_KEY_ID}),
            "RS256 forgery": jwt.encode(claims, rsa.generate_private_key(65537, 2048), "RS256",
                                        headers={"kid": SIGNING_KEY_ID}),
            "foreign key": jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256",
                                      headers={"kid": SIGNING_KEY_ID}),
            "alg none": jwt.encode(claims, None, "none"),
        }
        self.kinds = [name for name in dir(self) if name.startswith("k_")]

    def draw(self) -> HttpRequest:
        return getattr(self, self.rng.choice(self.kinds))()

    def _auth(self, token: str | None = "") -> dict:
        token = self.target.token if token == "" else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _post(self, kind: str, path: str, body: bytes, content_type: str, **headers) -> HttpRequest:
        fields = {"Content-Type": content_type, **self._auth(), **headers}
        return HttpRequest(kind, request("POST", path, fields, body, self.target.host))

    def k_valid_text(self) -> HttpRequest:
        body = json.dumps({"text": hostile.hostile_texts(self.rng) or "effusion", "topK": 5}).encode()
        return self._post("valid text", "/v1/search/text", body, "application/json")

    def k_valid_image(self) -> HttpRequest:
        return self._post("valid image", "/v1/search/image?top_k=3", self.png, "image/png")

    def k_hostile_image(self) -> HttpRequest:
        kind, data = self.images.draw()
        content_type = self.rng.choice(["image/png", "image/jpeg", "application/dicom", "application/octet-stream"])
        return self._post(f"image:{kind}", "/v1/search/image", data, content_type)

    def k_multipart(self) -> HttpRequest:
        boundary = "fuzz" + str(self.rng.randrange(10**9))
        _, image = self.images.draw()
        parts = [(self.rng.choice(["image", "other", "image"]), image)]
        parts += [(self.rng.choice(["top_k", "label", "x" * 300, "model"]), b"y" * self.rng.choice([1, 70_000]))
                  for _ in range(self.rng.choice([0, 2, 70]))]
        files = ['; filename="a.png"'] + [""] * (len(parts) - 1)
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode()
                        + value + b"\r\n" for (name, value), file in zip(parts, files))
        body += f"--{boundary}--\r\n".encode() if self.rng.random() < 0.8 else b""  # or truncated
        content_type = self.rng.choice([f"multipart/form-data; boundary={boundary}", "multipart/form-data",
                                        "multipart/form-data; boundary=wrong"])
        return self._post("multipart", "/v1/search/image", body, content_type)

    def k_json(self) -> HttpRequest:
        body = self.rng.choice([
            b"{", b"[]", b"null", b"\"text\"", b"\xff\xfe{}", b'{"text": 5}', b'{"text": "x", "topK": "ten"}',
            b'{"text": "x", "text": "y"}', b'{"txt": "x"}', b'{"text": "' + b"a" * 20_000 + b'"}',
            b"[" * 100_000, b'{"text": "x", "filters": {"labels": ["' + b"Jane Roe" * 1000 + b'"]}}',
            b'{"text": "x", "topK": 1e309}', b'{"text": "\\ud800"}', self.rng.randbytes(300),
        ])
        return self._post("json", "/v1/search/text", body, "application/json")

    def k_json_values_bomb(self) -> HttpRequest:
        body = b'{"queries": [' + b"{}," * self.rng.choice([40_000, 200_000]) + b"{}]}"
        return self._post("json values bomb", "/v1/search/batch", body, "application/json")

    def k_batch(self) -> HttpRequest:
        images = [base64.b64encode(self.images.draw()[1]).decode() for _ in range(self.rng.choice([1, 3]))]
        queries = [{"image": {"image": image, "topK": 2}} for image in images]
        queries += [{"text": {"text": "mass"}}] * self.rng.choice([0, 1, 300])
        queries += [{"image": {"image": "not base64 !!!"}}] if self.rng.random() < 0.2 else []
        return self._post("batch", "/v1/search/batch", json.dumps({"queries": queries}).encode(), "application/json")

    def k_declared_too_large(self) -> HttpRequest:
        path = self.rng.choice(["/v1/search/text", "/v1/search/image", "/v1/search/batch"])
        fields = {"Content-Type": "application/json", **self._auth(self.rng.choice(["", None]))}
        data = request("POST", path, fields, b"{" * 1000, self.target.host, length=self.rng.choice([2**27, 85 * 2**20]))
        return HttpRequest("declared too large", data)

    def k_headers(self) -> HttpRequest:
        choice = self.rng.randrange(7)
        body = b'{"text": "effusion"}'
        fields = {"Content-Type": "application/json", **self._auth()}
        if choice == 0:
            fields["Authorization"] = "Bearer " + "a" * self.rng.choice([9_000, 15_000])
        elif choice == 1:
            fields["Authorization"] = "Bearer caf\xe9"
        elif choice == 2:
            fields["Transfer-Encoding"] = "chunked"
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            fields["Content-Length"] = "5"
        elif choice == 3:
            fields["Origin"] = self.rng.choice(["https://evil.example", "null", "http://localhost.evil.example"])
        elif choice == 4:
            fields.update({f"X-Padding-{i}": "p" * 100 for i in range(self.rng.choice([10, 200]))})
        elif choice == 5:
            return HttpRequest("headers: host", request("POST", "/v1/search/text", fields, body,
                                                         self.rng.choice(["127.0.0.1.nip.io", "evil.example", ""])))
        else:
            fields["Expect"] = "100-continue"
        return HttpRequest(f"headers: {choice}", request("POST", "/v1/search/text", fields, body, self.target.host))

    def k_tokens(self) -> HttpRequest:
        name = self.rng.choice(list(self.tokens))
        method, path = self.rng.choice([("GET", "/v1/models"), ("GET", "/v1/search/options"),
                                        ("GET", "/v1/studies/00000002_000"), ("POST", "/v1/search/text")])
        body = b'{"text": "effusion"}' if method == "POST" else b""
        fields = {"Content-Type": "application/json", **self._auth(self.tokens[name])}
        return HttpRequest(f"token: {name}", request(method, path, fields, body, self.target.host))

    def k_paths(self) -> HttpRequest:
        path = self.rng.choice([
            "/v1/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/v1/" + "a" * 6000, "/v1/studies/" + "%00" * 50,
            "/v1/thumbnails/..%2f..%2fetc%2fpasswd?size=64", "/v1/thumbnails/x?size=99999",
            "/v1/search/options?modle=x",
            "/v1/search/options?model=" + "m" * 3000, "/v1/search/image?top_k=ten", "/v1/studies/' OR 1=1 --",
            "/static/../../README.md", "/v1/searches", "/index.html", "/v1/openapi.json",
        ])
        return HttpRequest("paths", request("GET", path, self._auth(), b"", self.target.host))

    def k_methods(self) -> HttpRequest:
        method = self.rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "CONNECT"])
        return HttpRequest(f"method {method}", request(method, self.rng.choice(ROUTES), self._auth(), b"",
                                                       self.target.host))

    def k_malformed_http(self) -> HttpRequest:
        return HttpRequest("malformed HTTP", self.rng.choice([
            b"GET\r\n\r\n", b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST /v1/search/text HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            self.rng.randbytes(200) + b"\r\n\r\n",
        ]))


SLOW_KINDS = ("idle", "headers", "body")


def slow_client(target: Target, kind: str, every_s: float, limit_s: float) -> float:
    """A slowloris of `kind`: connect and send nothing, dribble headers, or dribble a body, a byte every
    `every_s`, until the server closes (or `limit_s` passes). Returns how long the connection lived."""
    head = request("POST", "/v1/search/text", {"Content-Type": "application/json",
                                                "Authorization": f"Bearer {target.token}"},
                   host=target.host, length=10_000)
    started = time.monotonic()
    try:
        with _connect(target, limit_s) as sock:
            if kind == "body":
                sock.sendall(head)
            dribble = head if kind == "headers" else b" " * 10_000
            for byte in dribble if kind != "idle" else b"":
                if time.monotonic() - started > limit_s or _early_answer(sock, limit_s):
                    break
                sock.send(bytes([byte]))
                time.sleep(every_s)
            _read(sock, started + limit_s)
    except (OSError, ssl.SSLError):
        pass
    return time.monotonic() - started
