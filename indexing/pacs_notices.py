"""Deletion notices pushed by Orthanc: the small HTTP listener of `cxr index follow --deletions-listen`,
and what a notice means for the index.

Orthanc's change feed has no deletions (cxr.dicomweb), but Orthanc (1.6 and later) calls a Lua
function for every resource it deletes, and deploy/orthanc/cxr-follow-deletions.lua posts each one
here: {"ResourceType": "Instance" | "Series" | "Study" | "Patient", "ID": <Orthanc id>}. Orthanc 1.10
calls OnDeletedInstance for every instance a deletion removes (a study's or a patient's too), and once
for each series, study and patient gone with it (a parent left empty goes too), as it answers the
DELETE (checked in tests/integration/indexing/test_pacs_notices.py). An instance stored again in place
(OverwriteInstances) brings a notice as well, though Orthanc holds its new copy.

The listener is bounded: POST to NOTICE_PATH only, bodies up to MAX_BODY, MAX_PENDING notices waiting
(more are refused with 503: a lost notice is found by the follower's reconciliation), one request at a
time with a REQUEST_TIMEOUT_S socket timeout, loopback unless a token is set. With a token
(`deletion_notices_token`), a request without `Authorization: Bearer <token>` is refused. Without one,
a local process could post notices, but none deletes anything by itself: the follower deletes an
instance only once Orthanc confirms it no longer holds it (Follower._apply_notices).

Orthanc's Lua engine runs its callbacks one at a time, each HttpPost blocking until answered (with a
listener slow to answer, Orthanc was seen slow to answer the next DELETE too): the listener answers as
soon as the notice is queued, and the follower commits in its own loop.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import socketserver
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer

from cxr.errors import FailedPreconditionError, InvalidArgumentError
from indexing.pacs_reconcile import resource_identifiers

log = logging.getLogger(__name__)

NOTICE_PATH = "/deletions"
RESOURCE_TYPES = ("Patient", "Study", "Series", "Instance")  # Orthanc's levels, top down
MAX_BODY = 64 * 1024  # a notice is about 80 bytes; a list of them is accepted up to this
MAX_PENDING = 100_000  # notices queued and not yet taken by the follower
TAKE_MAX = 10_000  # notices handed over (and committed) at once
REQUEST_TIMEOUT_S = 5.0  # a client that stalls mid-request is dropped
DEFAULT_HOST = "127.0.0.1"
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")


@dataclass(frozen=True)
class Notice:
    """One resource Orthanc deleted: its level (one of RESOURCE_TYPES) and its Orthanc id."""
    resource_type: str
    orthanc_id: str


def parse_notices(body: bytes) -> list[Notice]:
    """The notices of a request's body: one {"ResourceType", "ID"} object or a list of them."""
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"a deletion notice is JSON: {exc}") from exc
    items = items if isinstance(items, list) else [items]
    notices = []
    for item in items:
        kind, oid = (item.get("ResourceType"), item.get("ID")) if isinstance(item, dict) else (None, None)
        if kind not in RESOURCE_TYPES or not isinstance(oid, str) or not _ORTHANC_ID.fullmatch(oid):
            raise InvalidArgumentError('a deletion notice is {"ResourceType": "Patient" | "Study" | "Series" | '
                                       '"Instance", "ID": an Orthanc id (5 groups of 8 hex digits)}')
        notices.append(Notice(kind, oid))
    return notices


class NoticeSource(ABC):
    """Where a follower takes deletion notices from (the listener; a list in tests)."""

    @abstractmethod
    def take(self, timeout: float) -> list[Notice]:
        """The notices waiting (up to TAKE_MAX), waiting up to `timeout` s for the first; [] when none came."""


class DeletionListener(NoticeSource):
    """The HTTP endpoint Orthanc's Lua script posts deletion notices to, on a thread of its own."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, token: str = "", max_pending: int = MAX_PENDING):
        if not token and not _is_loopback(host):
            raise InvalidArgumentError(
                f"--deletions-listen {host}:{port} listens beyond this machine without a token: set "
                "deletion_notices_token (CXR_DELETION_NOTICES_TOKEN) and the same TOKEN in the Lua script, or "
                f"listen on {DEFAULT_HOST}")
        self.token, self.max_pending = token, max_pending
        self._pending: deque[Notice] = deque()
        self._ready = threading.Condition()
        self.refused = 0  # notices refused because the queue was full
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise FailedPreconditionError(f"--deletions-listen {host}:{port}: cannot listen there ({exc.strerror}); "
                                          "choose a free port") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,), name="deletion-notices",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def at(cls, address: str, token: str = "") -> DeletionListener:
        """A listener on `address`: HOST:PORT, [IPv6]:PORT, or PORT alone (on DEFAULT_HOST)."""
        host, port = listen_address(address)
        return cls(host, port, token)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{NOTICE_PATH}"

    def offer(self, notices: list[Notice]) -> bool:
        """Queue notices (all or none); False when that would pass max_pending."""
        with self._ready:
            if len(self._pending) + len(notices) > self.max_pending:
                self.refused += len(notices)
                return False
            self._pending.extend(notices)
            self._ready.notify_all()
        return True

    def take(self, timeout: float) -> list[Notice]:
        with self._ready:
            self._ready.wait_for(lambda: self._pending, timeout)
            return [self._pending.popleft() for _ in range(min(TAKE_MAX, len(self._pending)))]

    def authorized(self, header: str) -> bool:
        return not self.token or hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> DeletionListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(HTTPServer):
    """One request at a time: Orthanc posts one notice at a time, and a slow client cannot hold threads."""

    def __init__(self, address: tuple[str, int], listener: DeletionListener):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = listener
        super().__init__(address, _Handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # HTTPServer's also looks the host's name up: a DNS wait
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S
    server_version = "cxr-deletion-notices"

    def do_POST(self):
        listener: DeletionListener = self.server.listener
        if self.path != NOTICE_PATH:
            return self._answer(404, f"deletion notices are posted to {NOTICE_PATH}")
        if not listener.authorized(self.headers.get("Authorization", "")):
            return self._answer(401, "a deletion notice needs Authorization: Bearer <deletion_notices_token>")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return self._answer(411, "a deletion notice needs a Content-Length")
        if int(length) > MAX_BODY:
            return self._answer(413, f"deletion notices are at most {MAX_BODY} bytes a request")
        try:
            notices = parse_notices(self.rfile.read(int(length)))
        except InvalidArgumentError as exc:
            return self._answer(400, str(exc))
        if not listener.offer(notices):
            return self._answer(503, f"{listener.max_pending} deletion notices are waiting already")
        self._answer(200, json.dumps({"queued": len(notices)}))

    def _refuse(self):
        self._answer(405, f"only POST {NOTICE_PATH}", {"Allow": "POST"})

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self, status: int, text: str, headers: dict | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 -- BaseHTTPRequestHandler's signature
        log.debug("deletion notices: " + format, *args)


def listen_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT, :PORT or PORT (host DEFAULT_HOST)."""
    host, _, port = address.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (":" in host and not bracketed) or not port.isdigit() or int(port) > 65535:
        raise InvalidArgumentError(f"--deletions-listen {address!r}: give HOST:PORT (e.g. {DEFAULT_HOST}:8099) or a "
                                   "port alone (on loopback)")
    return host or DEFAULT_HOST, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OrthancIds:
    """The Orthanc ids of what a follower lists: each patient, study, series and instance id -> the SOP
    UIDs indexed under it, so a notice becomes the instances it names. Keys are the ids' first 64 bits,
    taken from the SHA-1 digest without writing the id out (an int takes less than half the memory of
    the id's text); a collision (a chance in 37 million over 1,000,000 instances) is harmless, since an
    instance is deleted only once Orthanc confirms it gone."""

    def __init__(self):
        self._instances: dict[int, str] = {}
        self._above: dict[int, list[str]] = {}  # patients, studies, series

    def add(self, sop: str, row: dict) -> None:
        *above, instance = _keys(row)
        if self._instances.get(instance[0]) == sop:
            return
        self._instances.update(dict.fromkeys(instance, sop))
        for key in (key for keys in above for key in keys):
            self._above.setdefault(key, []).append(sop)

    def remove(self, sop: str, row: dict) -> None:
        """Take out an instance added with `row`."""
        *above, instance = _keys(row)
        if self._instances.get(instance[0]) != sop:
            return
        for key in instance:
            del self._instances[key]
        for key in (key for keys in above for key in keys):
            if (sops := self._above.get(key)) is not None and sop in sops:
                sops.remove(sop)
                if not sops:
                    del self._above[key]

    def sops(self, notices: Iterable[Notice]) -> tuple[list[str], int]:
        """The SOP UIDs listed under the notices' resources, and how many notices named none of them."""
        found, unknown = {}, 0
        for notice in notices:
            key = _key(notice.orthanc_id)
            if notice.resource_type == "Instance":
                named = [self._instances[key]] if key in self._instances else []
            else:
                named = self._above.get(key, [])
            found.update(dict.fromkeys(named))
            unknown += not named
        return list(found), unknown

    def __len__(self) -> int:
        return len(set(self._instances.values()))


def _key(orthanc_id: str) -> int:
    return int(orthanc_id[:8] + orthanc_id[9:17], 16)


def _keys(row: dict) -> tuple[tuple[int, ...], ...]:
    """The keys of a row's patient, study, series and instance ids (pacs_reconcile.resource_identifiers):
    the first 64 bits of each SHA-1, as _key reads them from an id."""
    return tuple(tuple(int.from_bytes(hashlib.sha1("|".join(identifiers).encode()).digest()[:8], "big")
                       for identifiers in level) for level in resource_identifiers(row))
