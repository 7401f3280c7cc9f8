"""A development PKI and JWT issuer, so tests and the demo run with TLS and tokens as production does.

`write_dev_pki(DIR)` (`cxr certs dev DIR`) writes a CA, a server certificate for localhost, a client
certificate and a JWT signing key with its JWKS. `issue_token` (`cxr token issue`) signs a JWT with
that key. Never use these in production: a hospital brings its own PKI and identity provider.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cxr.errors import FailedPreconditionError, NotFoundError
from cxr.settings import Settings

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
CLIENT_CERT, CLIENT_KEY = "client.pem", "client.key"
SIGNING_KEY, JWKS_FILE = "signing.key", "jwks.json"
FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY, SIGNING_KEY, JWKS_FILE)
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
CLIENT_NAME = "cxr-dev-client"
VALID_DAYS = 365
JWT_ALGORITHM = "ES256"
SIGNING_KEY_ID = "cxr-dev-1"


class PkiError(FailedPreconditionError):
    """Development certificates or keys could not be written or read."""


class SigningKeyMissingError(NotFoundError):
    """The signing key named is not there."""


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cxr-retrieval development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: x509.Name, issuer_key, extensions) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(names) -> x509.SubjectAlternativeName:
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _leaf(subject: str, usage, ca_cert: x509.Certificate, ca_key, names=()) -> tuple[x509.Certificate, object]:
    key = _new_key()
    extensions = [(x509.BasicConstraints(ca=False, path_length=None), True),
                  (x509.ExtendedKeyUsage([usage]), False)]
    if names:
        extensions.append((_san(names), False))
    return _certificate(subject, key, ca_cert.subject, ca_key, extensions), key


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool) -> None:
    """Private keys are created readable by their owner only."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(path, flags, 0o600 if private else 0o644), "wb") as f:
        f.write(data)


def jwks(public_key, key_id: str = SIGNING_KEY_ID) -> dict:
    """A JWKS holding one public key (what an identity provider publishes)."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    return {"keys": [dict(jwk, kid=key_id, use="sig", alg=JWT_ALGORITHM)]}


def write_dev_pki(directory: Path, force: bool = False) -> list[Path]:
    """Write the development CA, server and client certificates and the JWT signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [directory / f for f in FILES if (directory / f).exists()]
    if existing and not force:
        raise PkiError(f"{directory} already holds {[p.name for p in existing]}: pass --force to replace them "
                       "(clients holding the old certificates or tokens will be refused)")
    ca_key = _new_key()
    ca_extensions = [(x509.BasicConstraints(ca=True, path_length=0), True),
                     (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                    encipher_only=False, decipher_only=False), True)]
    ca = _certificate("cxr-retrieval development CA", ca_key, _name("cxr-retrieval development CA"), ca_key,
                      ca_extensions)
    server, server_key = _leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, ca, ca_key, SERVER_NAMES)
    client, client_key = _leaf(CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, ca, ca_key)
    signing_key = _new_key()
    pem = serialization.Encoding.PEM
    outputs = {CA_CERT: (ca.public_bytes(pem), False), CA_KEY: (_pem_key(ca_key), True),
               SERVER_CERT: (server.public_bytes(pem), False), SERVER_KEY: (_pem_key(server_key), True),
               CLIENT_CERT: (client.public_bytes(pem), False), CLIENT_KEY: (_pem_key(client_key), True),
               SIGNING_KEY: (_pem_key(signing_key), True),
               JWKS_FILE: (json.dumps(jwks(signing_key.public_key()), indent=2).encode(), False)}
    for name, (data, private) in outputs.items():
        _write(directory / name, data, private)
    return [directory / name for name in outputs]


def issue_token(key_file: Path, subject: str, scopes: list[str], ttl_s: float, issuer: str, audience: str,
                key_id: str = SIGNING_KEY_ID) -> str:
    """A JWT signed with the development key, as the hospital's identity provider would issue one."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise SigningKeyMissingError(f"no signing key at {key_file}: write one with `cxr certs dev DIR`") from exc
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read the signing key {key_file}: {exc}; write one with `cxr certs dev DIR`") from exc
    now = int(time.time())
    claims = {"sub": subject, "scope": " ".join(scopes), "iss": issuer, "aud": audience, "iat": now, "nbf": now,
              "exp": now + int(ttl_s)}
    return jwt.encode(claims, key, algorithm=JWT_ALGORITHM, headers={"kid": key_id})


def dev_security(settings: Settings, directory: Path, subject: str, scopes: list[str], audit_log: Path | None = None,
                 ttl_s: float = 3600) -> Settings:
    """`settings` as a hospital runs the gateway (mutual TLS, tokens, an audit log), with a development
    PKI in `directory` (written once); the client side holds a client certificate and a JWT."""
    if not (directory / JWKS_FILE).is_file():
        write_dev_pki(directory, force=True)
    token = issue_token(directory / SIGNING_KEY, subject, scopes, ttl_s, settings.jwt_issuer, settings.jwt_audience)
    return replace(settings, tls_cert=directory / SERVER_CERT, tls_key=directory / SERVER_KEY,
                   tls_client_ca=directory / CA_CERT, auth="token", jwt_jwks=str(directory / JWKS_FILE),
                   audit_log=audit_log, ca=directory / CA_CERT, client_cert=directory / CLIENT_CERT,
                   client_key=directory / CLIENT_KEY, token=token)
