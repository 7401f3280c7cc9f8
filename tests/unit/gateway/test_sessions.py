"""Sign-in sessions and sign-ins under way, sealed into cookies (gateway/sessions.py)."""

import base64
import logging
from dataclasses import replace

import pytest

from gateway.sessions import (MAX_CREDENTIAL_CHARS, PREFIX, SESSION, SIGN_IN, Ended, Identity, PendingLogin,
                              PendingLogins, Sealer, SessionStore, is_session)

KEY = "k" * 44


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


IDENTITY = Identity("u-1", "dr.grey", frozenset({"search", "studies"}), expires_at=1600.0, id_token="header.body.sig")


def test_a_session_lasts_until_it_expires_or_is_closed():
    clock = Clock()
    store = SessionStore(Sealer.of(KEY), clock=clock)
    credential = store.open(IDENTITY)
    assert is_session(credential) and credential.startswith(PREFIX) and len(credential) > 40
    assert store.get(credential) == IDENTITY
    assert store.get(credential + "x") is None
    clock.now = 1600.0
    assert store.get(credential) is None  # expired
    other = store.open(replace(IDENTITY, expires_at=2000.0))
    assert store.close(other).subject == "u-1"
    assert store.get(other) is None and store.close(other) is None


def test_every_replica_with_the_same_key_opens_a_session_and_none_other_does(caplog):
    clock = Clock()
    one, two = SessionStore(Sealer.of(KEY), clock=clock), SessionStore(Sealer.of(KEY), clock=clock)
    credential = one.open(IDENTITY)
    assert two.get(credential) == IDENTITY
    stranger = SessionStore(Sealer.of("x" * 44), clock=clock)
    private = SessionStore(clock=clock)  # no oidc_session_key: a key of its own
    with caplog.at_level(logging.WARNING, "cxr.gateway.sessions"):
        assert stranger.get(credential) is None and private.get(credential) is None
        assert stranger.get(credential) is None
    foreign = [r for r in caplog.records if "another key" in r.getMessage()]
    assert len(foreign) == 2, "once per key and replica, naming key ids only"
    assert Sealer.of(KEY).key_id.hex() in foreign[0].getMessage() and KEY not in caplog.text
    assert private.get(private.open(IDENTITY)) == IDENTITY
    assert SessionStore(clock=clock).get(private.open(IDENTITY)) is None  # a restart without the key


def test_the_browser_can_neither_read_nor_alter_what_it_holds():
    store = SessionStore(Sealer.of(KEY), clock=Clock())
    credential = store.open(IDENTITY)
    raw = base64.urlsafe_b64decode(credential[len(PREFIX):] + "==")
    assert b"dr.grey" not in raw and b"u-1" not in raw and b"studies" not in raw
    for position in (0, 3, 10, len(raw) // 2, len(raw) - 1):  # version, key id, nonce, body, tag
        altered = bytearray(raw)
        altered[position] ^= 1
        forged = PREFIX + base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        assert store.get(forged) is None, position
    for junk in (PREFIX, PREFIX + "!!!", PREFIX + "AAAA", "eyJ.a.b"):
        assert store.get(junk) is None


def test_a_sign_in_cookie_is_no_session_and_a_session_no_sign_in():
    sealer = Sealer.of(KEY)
    login, sealed = PendingLogins(sealer, clock=Clock()).start("https://x/cb")
    assert SessionStore(sealer, clock=Clock()).get(PREFIX + sealed) is None
    session = SessionStore(sealer, clock=Clock()).open(IDENTITY)
    assert PendingLogins(sealer, clock=Clock()).finish(session[len(PREFIX):], login.state) is None
    assert sealer.open(SESSION, sealed) is None and sealer.open(SIGN_IN, sealed)["state"] == login.state


def test_a_signed_out_session_is_refused_here_until_it_would_have_ended():
    clock = Clock()
    store = SessionStore(Sealer.of(KEY), clock=clock)
    credential = store.open(IDENTITY)
    store.close(credential)
    assert store.get(credential) is None
    clock.now = IDENTITY.expires_at + 1
    assert store.get(credential) is None  # expired by then anyway


def test_ended_credentials_are_bounded_and_forgotten_once_past():
    clock = Clock()
    ended = Ended(clock, limit=2)
    assert ended.add("a", 2000.0) and not ended.add("a", 2000.0)
    ended.add("b", 2000.0)
    ended.add("c", 2000.0)
    assert "a" not in ended and "b" in ended and "c" in ended and len(ended) == 2
    expiring = Ended(clock, limit=10)
    expiring.add("d", 1001.0)
    expiring.add("e", 3000.0)
    clock.now = 1002.0
    assert "d" not in expiring and "e" in expiring
    expiring.add("f", 3000.0)
    assert len(expiring) == 2  # d was past: dropped


def test_a_session_too_large_for_a_cookie_goes_without_its_id_token():
    store = SessionStore(Sealer.of(KEY), clock=Clock())
    large = replace(IDENTITY, id_token="h." + "b" * 4000 + ".s")
    credential = store.open(large)
    assert len(credential) <= MAX_CREDENTIAL_CHARS
    assert store.get(credential) == replace(large, id_token="")


def test_the_pkce_challenge_is_s256_of_the_verifier():
    # RFC 7636 appendix B's example.
    login = replace(PendingLogin.new("https://x/cb", 0), verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    assert login.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    fresh = PendingLogin.new("https://x/cb", 0)
    assert 43 <= len(fresh.verifier) <= 128 and len({fresh.state, fresh.nonce, fresh.verifier}) == 3


def test_a_sign_in_is_finished_once_within_its_time_and_for_its_state_only():
    clock = Clock()
    pending = PendingLogins(Sealer.of(KEY), ttl_s=600, clock=clock)
    login, sealed = pending.start("https://x/cb")
    assert login.state not in sealed and login.verifier not in sealed
    assert pending.finish(sealed, "another-state") is None
    assert pending.finish(sealed, login.state) == login
    assert pending.finish(sealed, login.state) is None  # a replayed answer
    late, late_sealed = pending.start("https://x/cb")
    clock.now += 601
    assert pending.finish(late_sealed, late.state) is None
    assert pending.finish("stäte", "stäte") is None and pending.finish("", "") is None


@pytest.mark.parametrize("behind_s, finished", [(30.0, True), (120.0, False)])
def test_a_sign_in_started_on_one_replica_finishes_on_another(behind_s, finished):
    started, other = Clock(), Clock()
    other.now -= behind_s  # its clock is behind: a little is tolerated
    login, sealed = PendingLogins(Sealer.of(KEY), clock=started).start("https://x/cb")
    assert (PendingLogins(Sealer.of(KEY), clock=other).finish(sealed, login.state) == login) is finished
    assert PendingLogins(Sealer.of("y" * 44), clock=started).finish(sealed, login.state) is None
