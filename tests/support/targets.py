"""A gateway under attack, and the clients an attacker (or a test) reaches it with."""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from cxr.dev_pki import dev_security
from support import GATEWAY_MODEL, BackgroundGateway


@dataclass
class Target:
    """A running gateway and what a client needs to reach it."""

    gateway: BackgroundGateway
    settings: object  # cxr.settings.Settings, with the client side (CA, certificate, token) when secured

    @property
    def address(self) -> str:
        return self.gateway.address

    @property
    def http_url(self) -> str:
        return self.gateway.http_url

    @property
    def audit_log(self) -> Path | None:
        return self.settings.audit_log

    @property
    def secured(self) -> bool:
        return self.settings.tls

    def ssl_context(self) -> ssl.SSLContext:
        """The client side of mutual TLS: the dev CA and the dev client certificate."""
        context = ssl.create_default_context(cafile=self.settings.ca)
        context.load_cert_chain(self.settings.client_cert, self.settings.client_key)
        return context

    def http(self, token: bool = True, timeout: float = 30) -> httpx.Client:
        """An HTTP client; with `token` (and when secured), it sends the client's bearer token."""
        headers = {"authorization": f"Bearer {self.settings.token}"} if token and self.settings.token else {}
        if not self.secured:
            return httpx.Client(base_url=self.http_url, headers=headers, timeout=timeout)
        return httpx.Client(base_url=self.http_url.replace("127.0.0.1", "localhost"), headers=headers,
                            verify=self.ssl_context(), timeout=timeout)

    def raw(self, timeout: float = 30) -> socket.socket:
        """A bare connection to the HTTP port (TLS-wrapped when secured), for what httpx will not send."""
        port = int(self.http_url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return self.ssl_context().wrap_socket(sock, server_hostname="localhost") if self.secured else sock


@contextlib.contextmanager
def running(settings, http: bool = True):
    """A gateway of `settings` in this process, with its HTTP side on, as a Target; stopped on exit."""
    background = BackgroundGateway(settings, http=http)
    try:
        yield Target(background, settings)
    finally:
        background.stop()


def secured_settings(served, root: Path, scopes: list[str], **limits):
    """Configuration B (mutual TLS, a `red-team` token with `scopes`, the audit log under `root`) over
    the served Triton, with `limits` (settings such as rate_limit_per_s) in place of the defaults."""
    return dev_security(replace(served, model=GATEWAY_MODEL, **limits), root / "pki", "red-team", scopes,
                        audit_log=root / "audit.log")
