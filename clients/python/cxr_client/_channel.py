"""How the clients reach the gateway: TLS (the system's roots or a CA file, mutual TLS with a client certificate),
the token as call credentials, and retries by gRPC's own retry policy (the service config) within each call's
one deadline. The sync and the asyncio client build their channels from one `Connection`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import grpc

from cxr_client._proto import retrieval_pb2 as pb
from cxr_client._version import __version__
from cxr_client.errors import ConfigurationError

SERVICE = pb.DESCRIPTOR.services_by_name["Retrieval"]
# Calls that change nothing, retried on UNAVAILABLE and RESOURCE_EXHAUSTED. The deletions are not: a deletion
# the gateway committed but whose answer was lost would, sent again, be answered NOT_FOUND.
IDEMPOTENT = ("SearchByText", "SearchByImage", "BatchSearch", "ListModels", "GetStudy", "GetThumbnail",
              "GetSearchOptions")
NOT_RETRIED = ("DeleteStudy", "DeleteImage")
MAX_ATTEMPTS = 5  # gRPC's own ceiling
MAX_MESSAGE_BYTES = 64 << 20  # a full-size DICOM, up and down
DEFAULT_TIMEOUT_S = 30.0  # the gateway's own default deadline
Token = Union[str, Callable[[], str]]
FileOrBytes = Union[str, os.PathLike, bytes, None]


def retry_policy(max_attempts: int = MAX_ATTEMPTS) -> dict:
    """gRPC's retry policy: UNAVAILABLE (the gateway restarting, draining, a replica gone) and RESOURCE_EXHAUSTED
    (a rate limit: the gateway's `grpc-retry-pushback-ms` sets the wait, or forbids a retry whose wait would
    outlast the deadline) with exponential backoff, at most `max_attempts` attempts, all within the call's
    deadline."""
    return {"maxAttempts": max_attempts, "initialBackoff": "0.2s", "maxBackoff": "5s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}


def service_config(max_attempts: int = MAX_ATTEMPTS) -> str:
    methods = [{"service": SERVICE.full_name, "method": name} for name in IDEMPOTENT]
    config = {"methodConfig": [{"name": methods, "retryPolicy": retry_policy(max_attempts)}]} if max_attempts > 1 \
        else {}
    return json.dumps(config)


def _read(value: FileOrBytes) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


class _TokenPlugin(grpc.AuthMetadataPlugin):
    """The token a callable returns at each call (a token that is refreshed), as `authorization: Bearer`."""

    def __init__(self, token: Callable[[], str]):
        self.token = token

    def __call__(self, context, callback):
        try:
            callback((("authorization", f"Bearer {self.token()}"),), None)
        except Exception as error:  # noqa: BLE001 - the call fails UNAVAILABLE naming it, never hangs
            callback((), error)


@dataclass(frozen=True)
class Connection:
    """Where and how to connect; see Client's docstring for each field."""

    address: str
    ca: FileOrBytes = None
    client_cert: FileOrBytes = None
    client_key: FileOrBytes = None
    token: Optional[Token] = None
    insecure: bool = False
    server_name: Optional[str] = None
    max_attempts: int = MAX_ATTEMPTS
    options: tuple = field(default_factory=tuple)

    def __post_init__(self):
        if self.insecure and (self.ca is not None or self.client_cert is not None):
            raise ConfigurationError("insecure=True sends plaintext, yet ca or client_cert is given: drop "
                                     "insecure=True to use TLS with them")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigurationError("mutual TLS needs both client_cert and client_key (PEM files or bytes)")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ConfigurationError(f"max_attempts must be 1 (no retries) to {MAX_ATTEMPTS}, gRPC's ceiling; "
                                     f"not {self.max_attempts}")

    def channel_options(self) -> list:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.enable_retries", 1), ("grpc.service_config", service_config(self.max_attempts)),
                   # Retried calls are replayed from a buffer: big enough for an image upload.
                   ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
                   # A restarted gateway is found again within seconds, not gRPC's default of up to 2 minutes.
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 5000),
                   ("grpc.primary_user_agent", f"cxr-retrieval-client/{__version__}")]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options + list(self.options)

    def credentials(self) -> Optional[grpc.ChannelCredentials]:
        """TLS (with the token as call credentials), or None for plaintext."""
        if self.insecure:
            return None
        tls = grpc.ssl_channel_credentials(_read(self.ca), _read(self.client_key), _read(self.client_cert))
        if not self.token:
            return tls
        call = (grpc.metadata_call_credentials(_TokenPlugin(self.token)) if callable(self.token)
                else grpc.access_token_call_credentials(self.token))
        return grpc.composite_channel_credentials(tls, call)

    def call_metadata(self) -> Optional[tuple]:
        """The token as plain metadata, only where the caller chose plaintext (insecure=True): gRPC sends call
        credentials over TLS only."""
        if not (self.insecure and self.token):
            return None
        token = self.token() if callable(self.token) else self.token
        return (("authorization", f"Bearer {token}"),)

    def sync_channel(self) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.address, options=self.channel_options())
        return grpc.secure_channel(self.address, credentials, options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.address, options=self.channel_options())
        return grpc.aio.secure_channel(self.address, credentials, options=self.channel_options())
