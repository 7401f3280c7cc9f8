"""Where the gateway may listen: beyond loopback only with TLS and auth, or when told it may not."""

from pathlib import Path

import pytest

from cxr.settings import Settings, SettingsError
from gateway import tls

PKI = dict(tls_cert=Path("server.pem"), tls_key=Path("server.key"))


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "localhost:0", "[::1]:50051"])
def test_loopback_may_stay_plaintext(address):
    tls.check_exposure(Settings(), address)


@pytest.mark.parametrize("settings, missing", [
    (Settings(), "TLS (tls_cert, tls_key) and auth"),
    (Settings(**PKI), 'auth = "token"'),
    (Settings(auth="token"), "TLS"),
])
def test_beyond_loopback_without_tls_or_auth_is_refused_with_the_reason(settings, missing):
    with pytest.raises(tls.ExposureError, match="allow_insecure") as error:
        tls.check_exposure(settings, "0.0.0.0:50051")
    assert missing in str(error.value)


def test_beyond_loopback_with_both_or_allow_insecure_is_accepted():
    tls.check_exposure(Settings(auth="token", **PKI), "10.1.2.3:50051")
    tls.check_exposure(Settings(allow_insecure=True), "[::]:50051")


@pytest.mark.parametrize("values, words", [
    (dict(tls_cert=Path("a.pem")), "together"),
    (dict(tls_client_ca=Path("ca.pem")), "needs tls_cert"),
    (dict(auth="jwt"), "none"),
])
def test_inconsistent_tls_settings_are_refused(values, words):
    with pytest.raises(SettingsError, match=words):
        Settings(**values)
