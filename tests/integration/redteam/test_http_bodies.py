"""Red team, HTTP bodies and parsing: what a hostile HTTP client can make the gateway read, parse and hold
before it is known who is asking, and how it is refused (issue 17: defects 1, 6, 7, 8, 16, 17, 20, 22, 23, 24).

Each test sends what the hardening issue found, over loopback to the real gateway (HTTP side and gRPC server
in front of the real Triton), and asserts the refusal and that the gateway still answers afterwards."""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import replace

import pytest

from cxr.dev_pki import dev_security
from gateway.http_messages import MAX_JSON_VALUES
from support import DATA_DIR, GATEWAY_MODEL
from support.targets import running, secured_settings

pytestmark = pytest.mark.triton
PNG = (DATA_DIR / "cxr_samples" / "00000001_000.png").read_bytes()
JSON_BOMB_BYTES = 85 * 2**20  # what the probe sent: [{},{},...] of 85 MB


def _head(method: str, path: str, headers: dict, host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _answer(sock: socket.socket, limit_s: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (or `limit_s` passes)."""
    sock.settimeout(limit_s)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def _still_answers(target) -> None:
    with target.http() as http:
        answer = http.post("/v1/search/text", json={"text": "cardiomegaly", "topK": 2})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 2, answer.text


# --- 1, 6: nothing is read or parsed before the caller is known, and only what the route needs ---------

def test_an_unauthenticated_json_bomb_is_refused_before_its_body_is_sent(secured_gateway):
    """The probe's 85 MB [{},{},...] without a token: answered 401 from the headers alone, connection closed."""
    with secured_gateway.raw() as sock:
        sock.sendall(_head("POST", "/v1/search/text", {"Content-Type": "application/json",
                                                        "Content-Length": JSON_BOMB_BYTES}, host="localhost"))
        sock.sendall(b"[{}," * 1000)  # a start: the rest never comes, and the answer does not wait for it
        started = time.monotonic()
        answer = _answer(sock)
    assert _status(answer) == 401 and time.monotonic() - started < 10, answer[:300]
    assert b"connection: close" in answer.lower()
    _still_answers(secured_gateway)


def test_a_large_body_to_a_route_that_takes_a_small_one_is_refused_unread(open_gateway):
    """No auth (configuration A): an 85 MB body to /v1/search/text gets 413 from its Content-Length."""
    with open_gateway.raw() as sock:
        sock.sendall(_head("POST", "/v1/search/text", {"Content-Type": "application/json",
                                                        "Content-Length": JSON_BOMB_BYTES}))
        answer = _answer(sock)
    assert _status(answer) == 413 and b"this route's limit" in answer, answer[:300]
    _still_answers(open_gateway)


def test_a_json_body_of_countless_values_is_refused_before_it_is_parsed(open_gateway):
    """Within the batch route's size limit, [{},{},...] is counted, not parsed: 1 MB holds 333,000 values."""
    bomb = b"[" + b"{}," * (2**20 // 3) + b"{}]"
    with open_gateway.http() as http:
        answer = http.post("/v1/search/batch", content=b'{"queries": ' + bomb + b"}",
                           headers={"content-type": "application/json"})
    assert answer.status_code == 400 and f"more than {MAX_JSON_VALUES} values" in answer.json()["error"]["message"]
    _still_answers(open_gateway)


def test_a_key_given_twice_is_refused_not_silently_overwritten(open_gateway):
    with open_gateway.http() as http:
        answer = http.post("/v1/search/text", content=b'{"text": "effusion", "topK": 3, "topK": 500}',
                           headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "'topK' is given more than once" in answer.json()["error"]["message"]


@pytest.fixture(scope="module")
def strict(served, nih_index):
    """Configuration A with small HTTP limits, so that slow clients and upload bursts meet them quickly."""
    settings = replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0, http_header_timeout_s=1.0,
                       http_body_timeout_s=2.0, http_keepalive_s=1.0, http_max_connections=6, max_concurrent_uploads=2)
    with running(settings) as target:
        yield target


@pytest.fixture(scope="module")
def two_uploads(served, nih_index):
    """Configuration A holding at most two upload bodies at once, each given 30 s to arrive."""
    settings = replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0, max_concurrent_uploads=2,
                       http_body_timeout_s=30.0)
    with running(settings) as target:
        yield target


def test_bodies_held_at_once_are_capped_and_the_next_upload_waits_then_is_refused(two_uploads):
    """Two uploads left hanging mid-body take both slots; a third waits for one, then gets 429. Once the
    hanging clients go, uploads are taken again."""
    head = _head("POST", "/v1/search/image", {"Content-Type": "image/png", "Content-Length": len(PNG)})
    hanging = [two_uploads.raw() for _ in range(2)]
    for sock in hanging:
        sock.sendall(head + PNG[:100])
    time.sleep(0.3)
    with two_uploads.raw() as third:
        third.sendall(head + PNG)
        answer = _answer(third)
    assert _status(answer) == 429 and b"max_concurrent_uploads" in answer, answer[:300]
    for sock in hanging:
        sock.close()
    time.sleep(0.5)
    with two_uploads.raw() as fourth:
        fourth.sendall(head + PNG)
        assert _status(_answer(fourth)) == 200


# --- 7: DNS rebinding ------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.evil.example", "127.0.0.1.nip.io", "127.0.0.1.nip.io:8080", "evil.example"])
def test_without_auth_a_name_that_only_looks_like_loopback_is_refused(open_gateway, host):
    with open_gateway.http() as http:
        answer = http.get("/v1/studies/00000002_000", headers={"host": host})
    assert answer.status_code == 421 and "patient" not in answer.text, answer.text


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.2", "[::1]"])
def test_loopback_names_and_addresses_are_answered(open_gateway, host):
    with open_gateway.http() as http:
        assert http.get("/v1/search/options", headers={"host": host}).status_code == 200


# --- 8: slow and idle clients ---------------------------------------------------------------------------

def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(strict):
    with strict.raw() as sock:
        started = time.monotonic()
        answer = _answer(sock, limit_s=20)
    assert _status(answer) == 408 and time.monotonic() - started < 10


def _dribble(sock: socket.socket, data: bytes, every_s: float, for_s: float) -> float | None:
    """Send `data` a byte at a time (slowloris); the seconds until the server cut us off, or None."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > for_s:
            return None
        try:
            sock.send(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        time.sleep(every_s)
    return None


def test_headers_sent_a_byte_at_a_time_are_cut_off(strict):
    head = _head("GET", "/v1/search/options", {"X-Padding": "a" * 200})
    with strict.raw() as sock:
        cut_after = _dribble(sock, head, every_s=0.05, for_s=8)
    assert cut_after is not None and cut_after < 5  # the header deadline is 1 s, however often bytes come


def test_a_body_sent_a_byte_at_a_time_is_cut_off(strict):
    head = _head("POST", "/v1/search/text", {"Content-Type": "application/json", "Content-Length": 1000})
    with strict.raw() as sock:
        sock.sendall(head)
        started = time.monotonic()
        assert _dribble(sock, b" " * 15, every_s=0.1, for_s=1.5) is None  # within the 2 s body deadline
        answer = _answer(sock, limit_s=10)
    assert _status(answer) == 408 and b"http_body_timeout_s" in answer and time.monotonic() - started < 6


def test_an_idle_keep_alive_connection_is_closed(strict):
    with strict.raw() as sock:
        sock.sendall(_head("GET", "/v1/search/options", {}))
        time.sleep(0.5)
        first = sock.recv(65536)
        assert _status(first) == 200
        started = time.monotonic()
        rest = _answer(sock, limit_s=20)
    assert rest == b"" and time.monotonic() - started < 5


def test_connections_beyond_the_cap_are_closed_at_once_and_the_gateway_answers_after(strict):
    idle = [strict.raw() for _ in range(6)]
    try:
        time.sleep(0.2)
        with strict.raw() as extra:
            assert _answer(extra, limit_s=5) == b""  # closed without an answer
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    with strict.raw() as sock:
        sock.sendall(_head("GET", "/v1/search/options", {"Connection": "close"}))
        assert _status(_answer(sock)) == 200


@pytest.fixture(scope="module")
def strict_tls(served, nih_index, tmp_path_factory):
    """Configuration B with a 1 s header timeout."""
    root = tmp_path_factory.mktemp("strict-tls")
    settings = dev_security(replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0, http_header_timeout_s=1.0),
                            root / "pki", "red-team", ["search"])
    with running(settings) as target:
        yield target


def test_a_tls_client_that_never_finishes_its_handshake_is_dropped(strict_tls):
    port = int(strict_tls.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        started = time.monotonic()
        assert _answer(sock, limit_s=20) == b""
    assert time.monotonic() - started < 10


def test_after_the_handshake_silent_tls_clients_are_closed_too(strict_tls):
    with strict_tls.raw() as sock:
        started = time.monotonic()
        answer = _answer(sock, limit_s=20)
    assert _status(answer) == 408 and time.monotonic() - started < 10


# --- 16, 17: headers --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [15_000, 17_000])
def test_an_oversized_authorization_header_is_named_not_taken_for_a_rate_limit(secured_gateway, size):
    with secured_gateway.http(token=False) as http:
        answer = http.get("/v1/search/options", headers={"authorization": "Bearer " + "a" * size})
    assert answer.status_code in (400, 431), answer.text
    if answer.status_code == 431:
        assert "Authorization header" in answer.json()["error"]["message"]


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(open_gateway):
    body = b'{"text": "effusion"}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    with open_gateway.raw() as sock:
        sock.sendall(_head("POST", "/v1/search/text", {"Content-Type": "application/json", "Content-Length": 5,
                                                        "Transfer-Encoding": "chunked"}) + chunked)
        answer = _answer(sock, limit_s=10)  # returns only because the server closed the connection
    assert _status(answer) == 400 and b"not both" in answer and b"connection: close" in answer.lower()


# --- 20: a client that goes away ---------------------------------------------------------------------

def test_a_client_leaving_mid_upload_logs_no_error(open_gateway, caplog):
    caplog.set_level(logging.INFO)
    head = _head("POST", "/v1/search/image", {"Content-Type": "image/png", "Content-Length": len(PNG)})
    with open_gateway.raw() as sock:
        sock.sendall(head + PNG[: len(PNG) // 2])
        time.sleep(0.3)
    time.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    _still_answers(open_gateway)


def test_a_body_whose_framing_breaks_mid_request_gets_400_and_logs_no_error(secured_gateway, caplog):
    """Found by `make fuzz`: uvicorn answered 400 while the request was handed to the app, whose own answer
    then raised in h11 (an ERROR and a traceback per request)."""
    caplog.set_level(logging.INFO)
    for _ in range(5):  # headers and a broken chunk in one packet, no token: the app refuses at once
        with secured_gateway.raw() as sock:
            sock.sendall(_head("POST", "/v1/search/text", {"Content-Type": "application/json",
                                                            "Transfer-Encoding": "chunked"}, "localhost") + b"zz\r\n")
            answer = _answer(sock, limit_s=10)
        assert _status(answer) == 400
    time.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    _still_answers(secured_gateway)


# --- 23: the HTTP side's own refusals are audited and rate-limited ------------------------------------

def _audit_lines(target) -> list[dict]:
    return [json.loads(line) for line in target.audit_log.read_text().splitlines()]


@pytest.mark.parametrize("request_kwargs, status", [
    (dict(method="POST", url="/v1/search/text", content=b'{"text": ', headers={"content-type": "application/json"}),
     400),
    (dict(method="POST", url="/v1/search/text", content=b"text=x",
          headers={"content-type": "application/x-www-form-urlencoded"}), 415),
    (dict(method="GET", url="/v1/search/options?modle=x"), 400),
    (dict(method="GET", url="/v1/no-such-route"), 404),
])
def test_refusals_of_the_http_side_are_audited(secured_gateway, request_kwargs, status):
    with secured_gateway.http() as http:
        answer = http.request(**request_kwargs)
    assert answer.status_code == status, answer.text
    request_id = answer.json()["error"]["requestId"]
    line = next(line for line in _audit_lines(secured_gateway) if line["request_id"] == request_id)
    assert line["principal"] == "red-team" or status == 404
    assert line["http_status"] == status and line["status"] != "OK"


@pytest.fixture(scope="module")
def limited(served, nih_index, tmp_path_factory):
    """Configuration B with a rate limit of one call per 20 s and a burst of 2."""
    root = tmp_path_factory.mktemp("limited")
    with running(secured_settings(served, root, ["search"], rate_limit_per_s=0.05, rate_limit_burst=2)) as target:
        yield target


def test_bad_requests_of_a_known_caller_cost_its_rate_tokens(limited):
    with limited.http() as http:
        codes = [http.post("/v1/search/text", content=b"{", headers={"content-type": "application/json"}).status_code
                 for _ in range(3)]
    assert codes == [400, 400, 429]


def test_unauthenticated_http_callers_are_throttled_by_address(limited):
    with limited.http(token=False) as http:
        codes = [http.post("/v1/search/text", json={"text": "x"}, headers={"authorization": "Bearer forged"})
                 .status_code for _ in range(4)]
    assert codes[:2] == [401, 401] and codes[2:] == [429, 429]


# --- 24: other web origins ----------------------------------------------------------------------------

def test_a_foreign_origin_cannot_make_the_browser_search(open_gateway):
    with open_gateway.http() as http:
        foreign = http.post("/v1/search/image", files={"image": ("x.png", PNG, "image/png")}, data={"top_k": "3"},
                            headers={"origin": "https://evil.example"})
        own = http.post("/v1/search/image", files={"image": ("x.png", PNG, "image/png")}, data={"top_k": "3"},
                        headers={"origin": open_gateway.http_url})
    assert foreign.status_code == 403 and "another web origin" in foreign.json()["error"]["message"]
    assert own.status_code == 200 and len(own.json()["hits"]) == 3


def test_answers_may_not_be_embedded_by_other_sites(open_gateway):
    with open_gateway.http() as http:
        image_id = http.post("/v1/search/text", json={"text": "effusion", "topK": 1}).json()["hits"][0]["imageId"]
        for answer in (http.get(f"/v1/thumbnails/{image_id}"), http.get("/v1/search/options"), http.get("/")):
            assert answer.headers["cross-origin-resource-policy"] == "same-origin"
