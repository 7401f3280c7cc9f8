"""Single sign-on on the search page, in Debian's chromium, against a real OpenID provider and the real
gateway, Triton and NIH index.

The provider is npm's oidc-provider (OpenID Certified; tests/support/oidc_provider.py starts it on
http://localhost:PORT, another site than the page's 127.0.0.1) with a password form, PKCE required, the
roles at its userinfo endpoint only (not in the ID token), and two clients: tokens of 10 minutes, and of
TTL_S seconds for the expiry test. Users: a radiologist (search and studies), a clerk (search only) and
a visitor with no mapped role. The tests sign in through the provider's form, use the role's scopes
(reports and thumbnails for one, refused for the other), sign out at the gateway and the provider, and
sign in again when a session ends. Skips without chromium, or without node and npm.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from support import BackgroundGateway
from support.oidc_provider import OidcProvider, ProviderClient, ProviderUser, missing
from support.search_page import ALL_THUMBNAILS_SETTLED, search_text, wait_for_results

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"
QUERY = "small left pleural effusion"
TTL_S = 15  # the short client's tokens, hence its sessions
SECRET = "a-client-secret-for-the-test"
ROLE_SCOPES = "radiologist=search,studies;clerk=search"
RADIOLOGIST = ProviderUser("dr.grey", "grey-password", "Meredith Grey", ("radiologist", "staff"))
CLERK = ProviderUser("kim.clerk", "kim-password", "Kim Park", ("clerk",))
VISITOR = ProviderUser("vis.itor", "visitor-password", "A Visitor", ("visitor",))


def _gateway(served, provider_issuer: str, client_id: str, tmp_path_factory):
    from gateway import api_keys

    keys = tmp_path_factory.mktemp("keys") / "api-keys.json"
    _, key = api_keys.add(keys, "pacs-router", ["search", "studies"])
    settings = replace(served, model=MODEL, auth="token", api_keys_file=keys, rate_limit_per_s=0,
                       oidc_issuer=provider_issuer, oidc_client_id=client_id, oidc_client_secret=SECRET,
                       oidc_scopes="openid profile roles", oidc_role_scopes=ROLE_SCOPES)
    background = BackgroundGateway(settings, http=True)
    return background, background.http_url, key


@pytest.fixture(scope="module")
def sites(served, nih_index, tmp_path_factory):
    """Two gateways (sessions of 10 minutes, and of TTL_S) signing in at one real provider; yields
    {"site": url, "short": url, "key": a service account's API key}."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from cxr.processes import free_ports

    port = free_ports(1)[0]
    issuer = f"http://localhost:{port}"
    started = []
    try:
        started.append(_gateway(served, issuer, "cxr-page", tmp_path_factory))
        started.append(_gateway(served, issuer, "cxr-page-short", tmp_path_factory))
        (_, site, key), (_, short, _) = started
        clients = [ProviderClient("cxr-page", [site + "/auth/callback"], [site + "/"], SECRET, 600),
                   ProviderClient("cxr-page-short", [short + "/auth/callback"], [short + "/"], SECRET, TTL_S)]
        with OidcProvider(clients, [RADIOLOGIST, CLERK, VISITOR], port=port):
            yield {"site": site, "short": short, "key": key}
    finally:
        for background, _, _ in started:
            background.stop()


def _sign_in(page, site: str, user: ProviderUser) -> None:
    """From the page, through the provider's form, back to the page signed in."""
    page.goto(site + "/")
    page.get_by_role("link", name="Sign in").click()
    _provider_form(page, user)
    page.get_by_text(f"Signed in as {user.username}").wait_for()


def _provider_form(page, user: ProviderUser, password: str | None = None) -> None:
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(password or user.password)
    page.get_by_role("button", name="Sign in").click()


def _status(url: str, cookie: str) -> int:
    """An API call from outside the browser with the given session cookie."""
    request = urllib.request.Request(url, headers={"Cookie": f"cxr_session={cookie}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _session_cookie(page) -> dict:
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "cxr_session"]
    return cookie


def _expected(problems: list[str]) -> list[str]:
    """Console errors other than the refused calls a test causes on purpose (401, 403)."""
    return [p for p in problems if not ("401" in p or "403" in p)]


def test_a_radiologist_signs_in_at_the_provider_and_opens_reports(page, sites):
    site = sites["site"]
    page.goto(site + "/")
    page.get_by_text("Sign in to search.").wait_for()
    assert page.get_by_role("button", name="Access token").is_visible()  # service accounts still paste one
    page.get_by_role("link", name="Sign in").click()
    _provider_form(page, RADIOLOGIST, password="wrong")
    page.get_by_text("Wrong username or password").wait_for()  # the provider checks passwords
    submitted = time.monotonic()
    _provider_form(page, RADIOLOGIST)
    page.get_by_text("Signed in as dr.grey").wait_for()
    page.get_by_text("Demo model — not for clinical use").wait_for()  # the options, with the session
    print(f"\nsign-in: the provider's form submitted to the page signed in, options loaded: "
          f"{time.monotonic() - submitted:.2f} s")

    search_text(page, QUERY)
    cards = wait_for_results(page)  # every thumbnail loaded: GetThumbnail needs `studies`
    assert cards and page.locator("#error").is_hidden()
    cards[0].get_by_role("button", name="Full report of result 1").click()
    study = cards[0].locator(".study")
    study.wait_for()
    assert "Images" in study.locator(".study-facts").inner_text()
    assert study.locator(".full-report").inner_text()

    cookie = _session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"].startswith("cxrs_")
    seen_by_scripts = page.evaluate("() => [document.cookie, localStorage.length, sessionStorage.length, "
                                    "location.href]")
    assert "cxrs_" not in seen_by_scripts[0] and seen_by_scripts[1:3] == [0, 0]
    assert "code=" not in seen_by_scripts[3] and "state=" not in seen_by_scripts[3]
    assert not page.problems, page.problems


def test_a_clerk_searches_but_is_refused_reports_and_thumbnails(page, sites):
    _sign_in(page, sites["site"], CLERK)
    search_text(page, QUERY)
    cards = wait_for_results(page, thumbnails=ALL_THUMBNAILS_SETTLED)
    assert cards and page.locator("#results .thumb.missing").count() == len(cards)  # GetThumbnail: 403
    assert page.locator("#results .report:not([hidden])").count() == 0  # hits without reports
    assert page.locator("#results .facts dt", has_text="Accession").count() == 0
    cards[0].get_by_role("button", name="Full report of result 1").click()
    page.wait_for_function("() => !document.getElementById('error').hidden")
    error = page.locator("#error").text_content()
    assert "Your account does not allow this" in error and "needs the scope 'studies'" in error
    assert cards[0].locator(".study").is_hidden()
    assert not _expected(page.problems), page.problems


def test_sign_out_ends_the_session_at_the_gateway_and_at_the_provider(page, sites):
    site = sites["site"]
    _sign_in(page, site, RADIOLOGIST)
    old = _session_cookie(page)["value"]
    assert _status(site + "/v1/search/options", old) == 200
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()  # the provider's end_session_endpoint
    page.wait_for_url(site + "/")
    page.get_by_role("link", name="Sign in").wait_for()
    assert not [c for c in page.context.cookies() if c["name"] == "cxr_session"]
    assert _status(site + "/v1/search/options", old) == 401  # ended at the gateway, not only forgotten
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Password").wait_for()  # ended at the provider too: its password again
    assert not _expected(page.problems), page.problems


def test_an_ended_session_asks_to_sign_in_again_and_the_provider_needs_no_password(page, sites):
    short = sites["short"]
    _sign_in(page, short, RADIOLOGIST)
    signed_in = time.monotonic()
    search_text(page, QUERY)
    assert wait_for_results(page)
    time.sleep(max(0.0, TTL_S + 1 - (time.monotonic() - signed_in)))
    search_text(page, QUERY)
    page.get_by_text("Your session has ended: sign in again.").wait_for()
    assert page.locator("#results .card").count() == 0  # what was on screen went with the session
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    again = time.monotonic()
    page.get_by_role("link", name="Sign in").click()
    page.get_by_text("Signed in as dr.grey").wait_for()  # the provider's session still holds
    print(f"\nsign-in again, no password: {time.monotonic() - again:.2f} s")
    assert not [url for url in navigations if "/interaction/" in url]  # no form: straight back
    search_text(page, QUERY)
    assert wait_for_results(page)
    assert not _expected(page.problems), page.problems


def test_an_account_without_a_mapped_role_is_told_so(page, sites):
    page.goto(sites["site"] + "/")
    page.get_by_role("link", name="Sign in").click()
    _provider_form(page, VISITOR)
    page.get_by_text("Your account has no role that gives access").wait_for()
    assert page.url == sites["site"] + "/"  # the reason's word taken off the address
    assert page.get_by_role("link", name="Sign in").is_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "cxr_session"]
    assert not _expected(page.problems), page.problems


def test_a_service_accounts_token_still_works_beside_sign_in(page, sites):
    page.goto(sites["site"] + "/")
    page.get_by_role("button", name="Access token").click()
    page.get_by_label("Access token", exact=True).fill(sites["key"])
    page.get_by_role("button", name="Use token").click()
    page.get_by_text("Demo model — not for clinical use").wait_for()
    search_text(page, QUERY)
    assert wait_for_results(page)
    assert page.get_by_role("link", name="Sign in").is_visible()  # nobody signed in: the token did it
    assert not page.problems, page.problems
