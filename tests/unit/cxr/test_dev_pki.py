"""`cxr certs dev`: a CA, a localhost server certificate, a client certificate and a JWT key that verify."""

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID


from cxr import dev_pki
from gateway import auth


def test_the_certificates_chain_to_the_ca_with_the_right_names(tmp_path):
    dev_pki.write_dev_pki(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in ("ca.key", "server.key", "client.key", "signing.key"):
        assert (tmp_path / key).stat().st_mode & 0o077 == 0, key


def test_existing_files_are_kept_unless_forced(tmp_path):
    dev_pki.write_dev_pki(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(dev_pki.PkiError, match="--force"):
        dev_pki.write_dev_pki(tmp_path)
    dev_pki.write_dev_pki(tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_an_issued_token_verifies_against_the_written_jwks(tmp_path):
    dev_pki.write_dev_pki(tmp_path)
    token = dev_pki.issue_token(tmp_path / "signing.key", "dr.grey", ["search"], 3600, "cxr-dev", "cxr-retrieval")
    verifier = auth.JwtVerifier(auth.JwksKeys(str(tmp_path / "jwks.json")), "cxr-dev", "cxr-retrieval")
    assert verifier.verify(token) == auth.Principal("dr.grey", "jwt", frozenset({"search"}))
