"""API keys: shown once, stored hashed, scoped, revocable without a restart."""

import json
import time

import pytest

from gateway import api_keys


def test_a_key_is_stored_hashed_and_verifies(tmp_path):
    path = tmp_path / "keys.json"
    record, key = api_keys.add(path, "pacs-router", ["search", "studies"])
    assert key.startswith(f"cxr_{record.id}_") and key not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    store = api_keys.ApiKeyStore(path)
    assert store.verify(key).scopes == ("search", "studies")
    with pytest.raises(api_keys.ApiKeyError, match="unknown"):
        store.verify(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_revocation_takes_effect_without_a_restart(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    record, key = api_keys.add(path, "nightly-job", ["search"])
    store = api_keys.ApiKeyStore(path)
    store.verify(key)
    time.sleep(0.01)  # a new modification time
    api_keys.revoke(path, record.id)
    monkeypatch.setattr(api_keys, "RELOAD_PERIOD_S", 0.0)
    with pytest.raises(api_keys.ApiKeyError, match="revoked"):
        store.verify(key)


def test_a_broken_key_file_keeps_the_keys_read_before(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    _, key = api_keys.add(path, "svc", ["search"])
    store = api_keys.ApiKeyStore(path)
    path.write_text("{ half written")
    monkeypatch.setattr(api_keys, "RELOAD_PERIOD_S", 0.0)
    assert store.verify(key).owner == "svc"


@pytest.mark.parametrize("scopes", [[], ["search", "root"]])
def test_unknown_or_no_scopes_are_refused(tmp_path, scopes):
    with pytest.raises(api_keys.ApiKeyError, match="scopes must be"):
        api_keys.add(tmp_path / "keys.json", "svc", scopes)


def test_list_shows_owner_scopes_and_revocation(tmp_path):
    path = tmp_path / "keys.json"
    first, _ = api_keys.add(path, "a", ["search"])
    api_keys.add(path, "b", ["admin"])
    api_keys.revoke(path, first.id)
    listed = api_keys.read(path)
    assert [(k.owner, k.scopes, bool(k.revoked)) for k in listed.values()] == [("a", ("search",), True),
                                                                               ("b", ("admin",), False)]
    assert all("sha256" in item for item in json.loads(path.read_text())["keys"])
