"""The sign-in routes (gateway/http_login.py) in the HTTP app, against a small in-process provider: the
cookies they set, the answers they refuse, the session as the API's credential, and the sign-out. The
gRPC side is a recording stand-in; the browser test (tests/integration/e2e) runs the real one."""

import urllib.parse

import pytest
from starlette.testclient import TestClient

from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway.admission import RateLimiter
from gateway.auth import Authenticator
from gateway.http_admission import FrontDoor
from gateway.http_api import Upstream, create_app
from gateway.http_login import Login
from gateway.oidc import OidcClient, OidcConfig
from gateway.sessions import PendingLogins, Sealer, SessionStore
from support.fake_oidc import CLIENT_ID, CLIENT_SECRET, CODE, FakeProvider


class RecordingUpstream(Upstream):
    """The gRPC side as the HTTP side sees it: answers GetStudy, keeps each call's metadata."""

    def __init__(self):
        super().__init__("unix:/nowhere", 5.0, 1 << 20)
        self.calls = []

    async def call(self, rpc, message, metadata):
        self.calls.append((rpc, dict(metadata)))
        return pb.Study(study_uid=message.study_uid, findings="No effusion."), ()


@pytest.fixture
def provider():
    fake = FakeProvider()
    yield fake
    fake.close()


def _app(provider, secure=False, rate_per_s=0.0, sso=True, key=None):
    """The HTTP app of one gateway replica; `key`: its oidc_session_key (None: a key of its own)."""
    config = OidcConfig(provider.issuer, CLIENT_ID, CLIENT_SECRET, "openid profile", "roles",
                        {"radiologist": ("search", "studies"), "clerk": ("search",)}, "", 3600.0)
    sealer = Sealer.of(key) if key else Sealer.private()
    sessions = SessionStore(sealer)
    login = Login(OidcClient(config), sessions, PendingLogins(sealer), secure) if sso else None
    door = FrontDoor(Authenticator(None, None, sessions), RateLimiter(rate_per_s, 2), RateLimiter(rate_per_s, 2),
                     session_cookie=login.cookie if login else None)
    upstream = RecordingUpstream()
    return create_app(upstream, door, login=login), upstream


def _sign_in(client, provider, roles=("radiologist",)):
    """/auth/login, the provider's part (its nonce taken from the request), then /auth/callback."""
    started = client.get("/auth/login", follow_redirects=False)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    provider.claims = {"roles": list(roles)}
    return started, client.get("/auth/callback", params={"code": CODE, "state": query["state"],
                                                         "iss": provider.issuer}, follow_redirects=False)


def test_a_sign_in_sets_an_httponly_strict_session_that_the_api_takes_as_its_credential(provider):
    app, upstream = _app(provider)
    client = TestClient(app)
    assert client.get("/auth/session").json() == {"sso": True, "signedIn": False}
    started, back = _sign_in(client, provider)
    assert started.status_code == 302 and started.headers["location"].startswith(provider.issuer + "/auth?")
    login_cookie = started.headers["set-cookie"].lower()
    assert "cxr_login=" in login_cookie and "httponly" in login_cookie and "samesite=lax" in login_cookie
    assert "path=/auth/callback" in login_cookie and "max-age=600" in login_cookie

    assert back.status_code == 303 and back.headers["location"] == "/"
    session_cookie = next(c for c in back.headers.get_list("set-cookie") if c.startswith("cxr_session="))
    assert "cxrs_" in session_cookie and "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
    assert "Max-Age" not in session_cookie and "Secure" not in session_cookie  # plain HTTP here
    assert "no-store" in back.headers["cache-control"]
    assert client.get("/auth/session").json() | {"expiresInS": 0} == {
        "sso": True, "signedIn": True, "user": "dr.grey", "scopes": ["search", "studies"], "expiresInS": 0}

    study = client.get("/v1/studies/s1")
    assert study.status_code == 200 and study.json()["findings"] == "No effusion."
    (rpc, metadata), = upstream.calls
    assert rpc == "GetStudy" and metadata["authorization"] == "Bearer " + client.cookies["cxr_session"]


def test_the_roles_scopes_are_in_effect(provider):
    app, upstream = _app(provider)
    client = TestClient(app)
    _sign_in(client, provider, roles=("clerk",))
    refused = client.get("/v1/studies/s1")
    assert refused.status_code == 403 and "needs the scope 'studies'" in refused.json()["error"]["message"]
    assert upstream.calls == []  # refused before the gRPC side


def test_a_pasted_token_goes_before_the_session(provider):
    app, upstream = _app(provider)
    client = TestClient(app)
    _sign_in(client, provider)
    answer = client.get("/v1/studies/s1", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and upstream.calls == []


@pytest.mark.parametrize("params, cookie, reason", [
    ({"state": "forged"}, True, "expired"),  # not this browser's sign-in
    ({}, False, "expired"),  # the answer reached another browser (no login cookie)
    ({"error": "access_denied"}, True, "denied"),
    ({"iss": "https://another.example"}, True, "failed"),
    ({"code": "a-used-code"}, True, "failed"),
    ({"state": "stäte"}, True, "expired"),  # not ASCII: refused like any other, no traceback
])
def test_an_answer_that_is_not_this_browsers_sign_in_opens_no_session(provider, params, cookie, reason):
    app, _ = _app(provider)
    client = TestClient(app)
    started = client.get("/auth/login", follow_redirects=False)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    if not cookie:
        client.cookies.clear()
    answer = dict({"code": CODE, "state": query["state"]}, **params)
    if "error" in params:
        answer.pop("code")
    back = client.get("/auth/callback", params=answer, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == f"/#login-error={reason}"
    assert "cxr_session" not in client.cookies
    assert client.get("/auth/session").json()["signedIn"] is False


def test_an_answer_is_taken_once(provider):
    client = TestClient(_app(provider)[0])
    started, back = _sign_in(client, provider)
    again = client.get(back.request.url, follow_redirects=False)
    assert again.headers["location"] == "/#login-error=expired"


def test_an_account_without_a_mapped_role_is_sent_back_with_no_role(provider):
    client = TestClient(_app(provider)[0])
    _, back = _sign_in(client, provider, roles=("visitor",))
    assert back.headers["location"] == "/#login-error=no-role"


def test_sign_out_ends_the_session_here_and_sends_the_browser_to_the_providers_logout(provider):
    app, _ = _app(provider)
    client = TestClient(app)
    _sign_in(client, provider)
    old = client.cookies["cxr_session"]
    refused = client.post("/auth/logout", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and client.get("/auth/session").json()["signedIn"]
    out = client.post("/auth/logout")
    url = urllib.parse.urlsplit(out.json()["logoutUrl"])
    query = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}{url.path}" == provider.issuer + "/logout"
    assert query["client_id"] == CLIENT_ID and query["post_logout_redirect_uri"] == "http://testserver/"
    assert query["id_token_hint"].count(".") == 2
    assert 'cxr_session=""' in out.headers["set-cookie"] and "cxr_session" not in client.cookies
    assert client.get("/auth/session").json()["signedIn"] is False
    stale = client.get("/v1/studies/s1", headers={"Cookie": f"cxr_session={old}"})
    assert stale.status_code == 401 and "sign in again" in stale.json()["error"]["message"]


@pytest.mark.parametrize("same_key", [True, False], ids=["shared oidc_session_key", "a key each"])
def test_replicas_sharing_the_session_key_finish_each_others_sign_ins_and_take_each_others_sessions(provider,
                                                                                                    same_key):
    """Behind a Service without affinity: /auth/login on one replica, the provider's redirect back to another,
    the calls after it to either."""
    one, _ = _app(provider, key="k" * 44)
    two, upstream = _app(provider, key="k" * 44 if same_key else "x" * 44)
    browser = TestClient(one)
    started = browser.get("/auth/login", follow_redirects=False)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce, provider.claims = query["nonce"], {"roles": ["radiologist"]}
    on_two = TestClient(two, cookies=browser.cookies)
    back = on_two.get("/auth/callback", params={"code": CODE, "state": query["state"], "iss": provider.issuer},
                      follow_redirects=False)
    if not same_key:
        assert back.headers["location"] == "/#login-error=expired" and "cxr_session" not in on_two.cookies
        return
    assert back.headers["location"] == "/"
    session = {"cxr_session": on_two.cookies["cxr_session"]}
    assert TestClient(one, cookies=session).get("/auth/session").json()["signedIn"] is True
    assert TestClient(two, cookies=session).get("/v1/studies/s1").status_code == 200
    assert upstream.calls[0][1]["authorization"] == "Bearer " + session["cxr_session"]


def test_under_tls_the_session_cookie_is_secure_and_host_only(provider):
    client = TestClient(_app(provider, secure=True)[0], base_url="https://testserver")
    _, back = _sign_in(client, provider)
    cookie = next(c for c in back.headers.get_list("set-cookie") if "cxr_session" in c)
    assert cookie.startswith("__Host-cxr_session=") and "Secure" in cookie and "Path=/" in cookie
    assert client.get("/auth/session").json()["signedIn"] is True


def test_sign_ins_are_rate_limited_per_address(provider):
    client = TestClient(_app(provider, rate_per_s=0.01)[0])
    assert [client.get("/auth/login", follow_redirects=False).status_code for _ in range(3)] == [302, 302, 429]


def test_without_single_sign_on_the_page_is_told_and_the_routes_say_how_to_turn_it_on(provider):
    client = TestClient(_app(provider, sso=False)[0])
    assert client.get("/auth/session").json() == {"sso": False, "signedIn": False}
    off = client.get("/auth/login", follow_redirects=False)
    assert off.status_code == 404 and "oidc_issuer" in off.json()["error"]["message"]
    cookie_only = client.get("/v1/studies/s1", headers={"Cookie": "cxr_session=cxrs_whatever"})
    assert cookie_only.status_code == 401  # the cookie is no credential without single sign-on
