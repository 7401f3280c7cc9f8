"""The OpenID Connect relying party (gateway/oidc.py) against a small in-process provider: what it sends
(PKCE, the client's credentials) and what it refuses (the ID token's signature, issuer, audience, azp,
nonce, expiry, at_hash; a discovery document of another issuer; a user without a mapped role)."""

import base64
import time
import urllib.parse

import jwt
import pytest

from cxr.settings import Settings
from gateway import oidc
from gateway.oidc import OidcClient, OidcConfig, OidcConfigError, OidcError, OidcUnavailable
from gateway.sessions import PendingLogin
from support.fake_oidc import ACCESS_TOKEN, CLIENT_ID, CLIENT_SECRET, CODE, FakeProvider, challenge, new_key

REDIRECT = "https://cxr.example/auth/callback"


@pytest.fixture
def provider():
    fake = FakeProvider()
    yield fake
    fake.close()


def _config(provider, **overrides) -> OidcConfig:
    values = dict(issuer=provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, scopes="openid profile",
                  roles_claim="roles", role_scopes={"radiologist": ("search", "studies"), "clerk": ("search",)},
                  redirect_url="", max_session_s=3600.0)
    return OidcConfig(**dict(values, **overrides))


def _login(provider) -> PendingLogin:
    login = PendingLogin.new(REDIRECT, 0.0)
    provider.nonce = login.nonce
    return login


def test_the_authorization_request_carries_state_nonce_and_an_s256_challenge(provider):
    client = OidcClient(_config(provider))
    login = _login(provider)
    url = urllib.parse.urlsplit(client.authorization_url(login))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}{url.path}" == provider.issuer + "/auth"
    assert query == {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
                     "scope": "openid profile", "state": login.state, "nonce": login.nonce,
                     "code_challenge": challenge(login.verifier), "code_challenge_method": "S256"}
    assert login.verifier not in url.query


def test_a_sign_in_redeems_the_code_with_the_verifier_and_maps_roles_to_scopes(provider):
    provider.claims = {"roles": ["radiologist", "on-call"]}
    login = _login(provider)
    identity = OidcClient(_config(provider)).sign_in(CODE, login)
    assert identity.subject == "u-123" and identity.name == "dr.grey"
    assert identity.scopes == {"search", "studies"}
    (path, headers, form), = [r for r in provider.requests if r[0] == "/token"]
    assert form == {"grant_type": "authorization_code", "code": CODE, "redirect_uri": REDIRECT,
                    "code_verifier": login.verifier}
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert not [r for r in provider.requests if r[0] == "/me"]  # the roles were in the ID token


def test_a_public_client_sends_its_id_and_no_secret(provider):
    OidcClient(_config(provider, client_secret="")).sign_in(CODE, _login(provider))
    (_, headers, form), = [r for r in provider.requests if r[0] == "/token"]
    assert form["client_id"] == CLIENT_ID and "Authorization" not in headers and "client_secret" not in form


def test_roles_missing_from_the_id_token_are_read_from_userinfo_of_the_same_subject(provider):
    provider.claims = {"roles": None}
    provider.userinfo = {"roles": "clerk"}
    assert OidcClient(_config(provider)).sign_in(CODE, _login(provider)).scopes == {"search"}
    provider.userinfo = {"sub": "someone-else", "roles": ["radiologist"]}
    with pytest.raises(OidcError, match="another subject"):
        OidcClient(_config(provider)).sign_in(CODE, _login(provider))


def test_a_nested_roles_claim_is_read_by_its_dotted_path(provider):
    provider.claims = {"realm_access": {"roles": ["clerk", "offline_access"]}}
    client = OidcClient(_config(provider, roles_claim="realm_access.roles"))
    assert client.sign_in(CODE, _login(provider)).scopes == {"search"}
    assert oidc.roles_in({"groups": "a, b c"}, "groups") == {"a", "b", "c"}


def test_an_account_without_a_mapped_role_is_refused(provider):
    provider.claims = {"roles": ["visitor"]}
    with pytest.raises(OidcError, match="no role that oidc_role_scopes maps") as refused:
        OidcClient(_config(provider)).sign_in(CODE, _login(provider))
    assert refused.value.reason == "no-role"


@pytest.mark.parametrize("claims, message", [
    ({"nonce": "another"}, "nonce"),
    ({"aud": "another-client"}, "Audience"),
    ({"iss": "https://evil.example"}, "Invalid issuer"),
    ({"exp": 1000, "iat": 900}, "expired"),
    ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
    ({"azp": "another-client"}, "azp"),
    ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "at_hash"),
])
def test_an_id_token_that_is_not_this_sign_ins_is_refused(provider, claims, message):
    provider.claims = dict(provider.claims, **claims)
    with pytest.raises(OidcError, match=message):
        OidcClient(_config(provider)).sign_in(CODE, _login(provider))


def test_a_matching_at_hash_is_accepted(provider):
    provider.claims = dict(provider.claims, at_hash=oidc.at_hash(ACCESS_TOKEN, "RS256"))
    assert OidcClient(_config(provider)).sign_in(CODE, _login(provider)).scopes == {"search", "studies"}


def test_an_id_token_signed_by_another_key_or_with_another_alg_is_refused(provider):
    client = OidcClient(_config(provider))
    login = _login(provider)
    provider.key, _ = new_key("k1")  # the JWKS's kid, but a key the JWKS does not hold
    with pytest.raises(OidcError, match="(?i)signature"):
        client.verify_id_token(provider.id_token(), login.nonce)
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "u-123", "nonce": login.nonce}
    for token, alg in [(jwt.encode(claims, None, "none"), "none"),
                       (jwt.encode(claims, "a-shared-secret-of-32-bytes-or-more", "HS256"), "HS256")]:
        with pytest.raises(OidcError, match=f"signed with '{alg}'"):
            client.verify_id_token(token, login.nonce)


def test_a_rotated_key_is_fetched_through_pyjwkclient(provider):
    client = OidcClient(_config(provider))
    login = _login(provider)
    client.verify_id_token(provider.id_token(), login.nonce)
    reads = provider.jwks_reads
    provider.rotate()
    assert client.verify_id_token(provider.id_token(), login.nonce)["sub"] == "u-123"
    assert provider.jwks_reads == reads + 1


def test_a_discovery_document_of_another_issuer_is_refused(provider):
    provider.discovery["issuer"] = "https://another.example"
    with pytest.raises(OidcConfigError, match="set oidc_issuer to exactly"):
        OidcClient(_config(provider)).metadata()


def test_a_provider_without_s256_is_refused(provider):
    provider.discovery["code_challenge_methods_supported"] = ["plain"]
    with pytest.raises(OidcConfigError, match="S256"):
        OidcClient(_config(provider)).metadata()


def test_a_refused_code_and_an_unreachable_provider_say_which(provider):
    client = OidcClient(_config(provider))
    with pytest.raises(OidcError, match="invalid_grant"):
        client.sign_in("a-used-code", _login(provider))
    gone = OidcClient(_config(provider, issuer="http://127.0.0.1:9"))
    with pytest.raises(OidcUnavailable, match="cannot be reached"):
        gone.metadata()


@pytest.mark.parametrize("id_token_s, expires_in_s, cap_s, lasts_s", [
    (300, 60, 3600, 60), (300, 600, 30, 30), (20, 600, 3600, 20)])
def test_the_session_ends_with_the_first_of_the_tokens_and_the_cap(provider, id_token_s, expires_in_s, cap_s,
                                                                    lasts_s):
    provider.claims = dict(provider.claims, exp=int(time.time()) + id_token_s)
    provider.token_answer = {"expires_in": expires_in_s}
    identity = OidcClient(_config(provider, max_session_s=cap_s)).sign_in(CODE, _login(provider))
    assert identity.expires_at - time.time() == pytest.approx(lasts_s, abs=2)


def test_logout_goes_to_the_end_session_endpoint_with_the_hint(provider):
    client = OidcClient(_config(provider))
    identity = client.sign_in(CODE, _login(provider))
    url = urllib.parse.urlsplit(client.logout_url(identity, "https://cxr.example/"))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert url.path == "/logout"
    assert query == {"client_id": CLIENT_ID, "post_logout_redirect_uri": "https://cxr.example/",
                     "id_token_hint": identity.id_token}
    del provider.discovery["end_session_endpoint"]
    assert OidcClient(_config(provider)).logout_url(identity, "https://cxr.example/") == "https://cxr.example/"


def test_the_settings_map_scopes_the_gateway_knows():
    settings = Settings(auth="token", oidc_issuer="https://idp.example", oidc_client_id="cxr",
                        oidc_role_scopes="radiologist=search,studies;clerk=search")
    assert OidcConfig.of(settings).role_scopes == {"radiologist": ("search", "studies"), "clerk": ("search",)}
    with pytest.raises(OidcConfigError, match="does not know"):
        OidcConfig.of(Settings(auth="token", oidc_issuer="https://idp.example", oidc_client_id="cxr",
                               oidc_role_scopes="radiologist=reports"))


def test_a_discovery_document_that_downgrades_an_endpoint_is_refused(provider):
    provider.discovery["token_endpoint"] = "ftp://idp.example/token"
    with pytest.raises(OidcConfigError, match="token_endpoint"):
        OidcClient(_config(provider)).metadata()


def test_a_nonce_of_any_type_or_text_fails_without_raising(provider):
    for nonce in (12345, "nonce-ü", ["a"]):
        provider.claims = {"roles": ["clerk"], "nonce": nonce}
        with pytest.raises(OidcError, match="nonce"):
            OidcClient(_config(provider)).sign_in(CODE, _login(provider))
