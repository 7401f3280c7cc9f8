"""Where and how the gateway listens: TLS from the settings, mutual TLS with a client CA, and no
plaintext or unauthenticated port beyond loopback unless `allow_insecure` says so. The same rules
and the same files serve the gRPC port and the HTTP one."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cxr.errors import CxrError, FailedPreconditionError
from cxr.settings import Settings, is_loopback


class ExposureError(FailedPreconditionError):
    """The gateway would listen beyond loopback without TLS or without auth."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CxrError(f"cannot read the {what} {path}: {exc.strerror or exc}; `cxr certs dev DIR` writes "
                       "development ones, production uses the hospital's PKI") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (client certificates required with tls_client_ca), or None."""
    if not settings.tls:
        return None
    http_ssl_context(settings)  # gRPC says only "Failed to bind" for a bad key: OpenSSL names the fault first
    pair = (_read(settings.tls_key, "TLS key (tls_key)"), _read(settings.tls_cert, "TLS certificate (tls_cert)"))
    client_ca = _read(settings.tls_client_ca, "client CA (tls_client_ca)") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def host_of(address: str) -> str:
    """'127.0.0.1:50051' -> '127.0.0.1', '[::1]:0' -> '::1'."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def check_exposure(settings: Settings, address: str) -> None:
    """Refuse a non-loopback address without TLS or without auth, unless allow_insecure."""
    host = host_of(address)
    if is_loopback(host) or settings.allow_insecure:
        return
    missing = [what for what, ok in (("TLS (tls_cert, tls_key)", settings.tls), ("auth = \"token\"",
                                                                              settings.auth == "token")) if not ok]
    if missing:
        raise ExposureError(
            f"refusing to listen on {address} without {' and '.join(missing)}: beyond loopback, queries and "
            "reports would cross the network readable by anyone, or be answered to anyone. Configure them "
            "(see docs/security.md), or set allow_insecure = true to accept that risk.")


def bind(server: grpc.aio.Server, settings: Settings, address: str) -> int:
    """Add the gateway's port to `server` (after `check_exposure`); returns the bound port. The server
    must be built with `grpc.so_reuseport` 0: gRPC's default would let a second gateway share the port."""
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # gRPC's "Failed to bind to address ..." and nothing more
        raise CxrError(f"the gRPC port {address} cannot be opened: another process (a second gateway?) listens "
                       "there, or the address is not this host's. Stop it, or set gateway_port "
                       "(CXR_GATEWAY_PORT) / gateway_host to a free one") from exc


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP side's TLS, as the gRPC side's: the gateway's certificate, and client certificates
    required (signed by tls_client_ca) when it is set; None without TLS."""
    if not settings.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(cafile=settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise CxrError(f"cannot load the gateway's TLS files: {_tls_fault(settings, exc)}; `cxr certs dev DIR` "
                       "writes development ones, production uses the hospital's PKI") from exc
    return context


def _tls_fault(settings: Settings, error: Exception) -> str:
    """Which file is wrong and how, in words an operator can act on (OpenSSL says "PEM lib")."""
    if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"tls_key {settings.tls_key} is not the private key of tls_cert {settings.tls_cert}"
    checks = ((settings.tls_cert, "tls_cert", "a PEM certificate", x509.load_pem_x509_certificates),
              (settings.tls_key, "tls_key", "a PEM private key without a passphrase",
               lambda data: serialization.load_pem_private_key(data, None)),
              (settings.tls_client_ca, "tls_client_ca", "PEM CA certificates", x509.load_pem_x509_certificates))
    for path, name, kind, parse in checks:
        if path is None:
            continue
        try:
            parse(path.read_bytes())
        except OSError as exc:
            return f"{name} {path} cannot be read ({exc.strerror or exc})"
        except (ValueError, TypeError):
            return f"{name} {path} is not {kind}"
    return str(error)
