"""One Milvus client for every store and look-up of a backend, and how long each kind of call waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from pymilvus import MilvusClient, MilvusException
from pymilvus.client.types import Status
from pymilvus.exceptions import ConnectionConfigException

from cxr.settings import SettingsError
from cxr.store.errors import StoreUnavailableError

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 2.0
LOAD_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 600.0
RECONNECT_AFTER_S = 1.0  # while the server is down, calls fail at once instead of each waiting to connect
COLLECTION_NOT_FOUND, COLLECTION_NOT_LOADED = 100, 101  # Milvus error codes (the same in Lite)
# Every search and query reads at Strong: a commit one process acknowledges (the follower's apply)
# is seen by the next search of any other (a gateway's). Bounded, Milvus's default, reads a view up
# to a few hundred ms old and may miss the last writes; Session covers only the client that wrote.
# On a cluster Strong waits until the query nodes have caught up with the newest timestamp (their
# sync timestamps come every time tick, 200 ms by default): a search may wait up to that long.
# Milvus Lite applies each write before answering it, so there it costs nothing measurable.
READ_CONSISTENCY = "Strong"


def shown_uri(uri: str) -> str:
    """The URI without credentials, for messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=host).geturl()


def _unreachable(exc: Exception) -> bool:
    if isinstance(exc, grpc.FutureTimeoutError):
        return True
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(exc, MilvusException) and exc.code in (
        Status.CONNECT_FAILED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def error_code(exc: Exception):
    return exc.code if isinstance(exc, MilvusException) else None


class Connection:
    """One client for every store and look-up of a backend. A client whose server went away is
    dropped, and the next call connects again: pymilvus would otherwise keep a dead channel."""

    def __init__(self, uri: str, token: str):
        self.uri = uri
        self.shown = shown_uri(uri)
        self._token = token
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._last_failure = ""

    def call(self, fn):
        client = self._connected()
        try:
            return fn(client)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self._forget(client, exc)
            raise StoreUnavailableError(self._unavailable()) from exc

    def server_version(self) -> str:
        """Milvus Lite's "milvus_lite-3.2.2", or a cluster's release ("v2.5.4")."""
        return str(self.call(lambda c: c.get_server_version(timeout=CALL_TIMEOUT_S)))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _connected(self) -> MilvusClient:
        with self._lock:  # one thread connects; the others wait for its client
            if self._client is not None:
                return self._client
            if time.monotonic() < self._retry_at:
                raise StoreUnavailableError(self._unavailable())
            try:
                self._client = self._connect()
            except StoreUnavailableError:
                self._retry_at = time.monotonic() + RECONNECT_AFTER_S
                raise
            return self._client

    def _connect(self) -> MilvusClient:
        if self.uri.endswith(".db"):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            # A channel of its own: gRPC shares connections to one address across a process, and a
            # shared one that failed waits out its reconnect backoff (up to minutes) after the server is back.
            return MilvusClient(self.uri, token=self._token, timeout=CONNECT_TIMEOUT_S, dedicated=True,
                                grpc_options={"grpc.use_local_subchannel_pool": 1})
        except ConnectionConfigException as exc:
            if self.uri.endswith(".db"):
                self._last_failure = (
                    f"Milvus Lite cannot open {self.uri} (see the log above). Milvus Lite serves a file to one "
                    "process at a time: stop the other process using it, or run `milvus-lite server --data-dir "
                    f"{self.uri} --port 19530` and give every process milvus_uri = http://127.0.0.1:19530")
                raise StoreUnavailableError(self._last_failure) from exc
            raise SettingsError(f"milvus_uri = {self.shown!r} is not a Milvus address: use a Milvus Lite file "
                                "ending in .db, or http(s)://host:19530 for a cluster") from exc
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self._last_failure = self._scrubbed(exc)
            raise StoreUnavailableError(self._unavailable()) from exc

    def _forget(self, client: MilvusClient, exc: Exception) -> None:
        with self._lock:
            if self._client is not client:
                return  # another thread already dropped it
            self._client = None
            self._last_failure = self._scrubbed(exc)
        try:
            client.close()
        except Exception:  # noqa: BLE001 - a dead channel may fail to close; it is gone either way
            pass

    def _scrubbed(self, exc: Exception) -> str:
        text = getattr(exc, "message", None) or str(exc)
        return text.replace(self._token, "***") if self._token else text

    def _unavailable(self) -> str:
        return (f"Milvus at {self.shown} is unreachable ({self._last_failure}): start it, or point milvus_uri "
                "at a running Milvus; queries succeed again once it answers")
