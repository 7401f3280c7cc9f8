"""Sign-in sessions and sign-ins under way (gateway/sessions.py)."""

from dataclasses import replace

from gateway.sessions import PREFIX, Identity, PendingLogin, PendingLogins, SessionStore, is_session


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


IDENTITY = Identity("u-1", "dr.grey", frozenset({"search", "studies"}), expires_at=1600.0, id_token="header.body.sig")


def test_a_session_lasts_until_it_expires_or_is_closed():
    clock = Clock()
    store = SessionStore(clock=clock)
    credential = store.open(IDENTITY)
    assert is_session(credential) and credential.startswith(PREFIX) and len(credential) > 40
    assert store.get(credential) == IDENTITY
    assert store.get(credential + "x") is None
    clock.now = 1600.0
    assert store.get(credential) is None and len(store) == 0  # expired: forgotten
    other = store.open(replace(IDENTITY, expires_at=2000.0))
    assert store.close(other).subject == "u-1"
    assert store.get(other) is None and store.close(other) is None


def test_the_store_keeps_digests_not_credentials_and_ends_the_oldest_past_its_cap():
    store = SessionStore(max_sessions=2, clock=Clock())
    first, second, third = (store.open(IDENTITY) for _ in range(3))
    assert store.get(first) is None and store.get(second) and store.get(third)
    assert all(second.encode() not in key and len(key) == 32 for key in store._sessions)


def test_the_pkce_challenge_is_s256_of_the_verifier():
    # RFC 7636 appendix B's example.
    login = replace(PendingLogin.new("https://x/cb", 0), verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    assert login.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    fresh = PendingLogin.new("https://x/cb", 0)
    assert 43 <= len(fresh.verifier) <= 128 and len({fresh.state, fresh.nonce, fresh.verifier}) == 3


def test_a_sign_in_is_finished_once_and_within_its_time():
    clock = Clock()
    pending = PendingLogins(ttl_s=600, max_pending=2, clock=clock)
    login = pending.start("https://x/cb")
    assert pending.finish(login.state) == login
    assert pending.finish(login.state) is None  # a replayed answer
    late = pending.start("https://x/cb")
    clock.now += 601
    assert pending.finish(late.state) is None
    oldest, _, _ = (pending.start("https://x/cb") for _ in range(3))
    assert pending.finish(oldest.state) is None  # dropped past the cap
