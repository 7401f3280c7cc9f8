from pathlib import Path

import pytest

from cxr.settings import DEFAULT_MODEL, SettingsError, load_settings


def test_defaults_use_triton_standard_ports_on_loopback(tmp_path):
    s = load_settings(tmp_path, environ={})
    assert s.model == DEFAULT_MODEL == "cxr-mini"
    assert (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port) == (8000, 8001, 8002)
    assert s.triton_host == "127.0.0.1"
    assert s.model_repository == tmp_path / "model_repository"


def test_config_file_sets_the_active_model_and_env_overrides_it(tmp_path):
    (tmp_path / "cxr.toml").write_text('[cxr]\nmodel = "siglip"\ntriton_grpc_port = 9001\n')
    assert load_settings(tmp_path, environ={}).model == "siglip"
    assert load_settings(tmp_path, environ={}).triton_grpc_port == 9001
    assert load_settings(tmp_path, environ={"CXR_MODEL": "biomedclip"}).model == "biomedclip"


def test_absolute_paths_are_kept_and_relative_ones_are_rooted(tmp_path):
    s = load_settings(tmp_path, environ={"CXR_MODEL_REPOSITORY": "/srv/models", "CXR_CACHE_DIR": "c"})
    assert s.model_repository == Path("/srv/models")
    assert s.cache_dir == tmp_path / "c"


def test_unknown_config_keys_are_refused(tmp_path):
    (tmp_path / "cxr.toml").write_text('[cxr]\nmodle = "siglip"\n')
    with pytest.raises(ValueError, match="modle"):
        load_settings(tmp_path, environ={})


OIDC = {"CXR_AUTH": "token", "CXR_OIDC_ISSUER": "https://idp.example/realms/h", "CXR_OIDC_CLIENT_ID": "cxr",
        "CXR_OIDC_ROLE_SCOPES": "radiologist=search,studies; clerk=search"}


def test_single_sign_on_settings_come_from_the_environment(tmp_path):
    from cxr.settings import role_scopes

    s = load_settings(tmp_path, environ=dict(OIDC, CXR_OIDC_CLIENT_SECRET="hush", CXR_OIDC_CA="ca.pem"))
    assert role_scopes(s.oidc_role_scopes) == {"radiologist": ("search", "studies"), "clerk": ("search",)}
    assert s.oidc_ca == tmp_path / "ca.pem" and s.oidc_scopes == "openid profile"
    assert "hush" not in repr(s)
    assert load_settings(tmp_path, environ=dict(OIDC, CXR_OIDC_ISSUER="http://localhost:9000")).oidc_issuer


def test_a_gateway_beyond_loopback_signs_in_with_a_session_key_its_replicas_share(tmp_path):
    key = "s3cret-" * 7
    s = load_settings(tmp_path, environ=dict(OIDC, CXR_GATEWAY_HOST="0.0.0.0", CXR_OIDC_SESSION_KEY=key))
    assert s.oidc_session_key == key and key not in repr(s)
    assert load_settings(tmp_path, environ=OIDC).oidc_session_key == ""  # loopback: a key of the process's own


@pytest.mark.parametrize("change, words", [
    ({"CXR_AUTH": "none"}, 'auth = "token"'),
    ({"CXR_OIDC_CLIENT_ID": ""}, "oidc_client_id"),
    ({"CXR_OIDC_ISSUER": "http://idp.example"}, "https://"),
    ({"CXR_OIDC_REDIRECT_URL": "http://cxr.example/auth/callback"}, "oidc_redirect_url"),
    ({"CXR_OIDC_SCOPES": "profile email"}, "openid"),
    ({"CXR_OIDC_ROLE_SCOPES": ""}, "no role, no access"),
    ({"CXR_OIDC_ROLE_SCOPES": "radiologist"}, "role=scope"),
    ({"CXR_OIDC_ROLE_SCOPES": "a=search;a=studies"}, "twice"),
    ({"CXR_GATEWAY_HOST": "0.0.0.0"}, "oidc_session_key .CXR_OIDC_SESSION_KEY. to a secret every replica shares"),
    ({"CXR_OIDC_SESSION_KEY": "short"}, "at least 32 printable ASCII characters"),
    ({"CXR_OIDC_SESSION_KEY": "k" * 40 + "\n"}, "at least 32 printable ASCII characters"),
])
def test_single_sign_on_settings_that_cannot_work_are_refused_with_the_remedy(tmp_path, change, words):
    with pytest.raises(ValueError, match=words):
        load_settings(tmp_path, environ=dict(OIDC, **change))


def test_a_config_file_that_is_not_toml_is_named(tmp_path):
    (tmp_path / "cxr.toml").write_text("[cxr\nmodel = 'siglip'\n")
    with pytest.raises(SettingsError, match="cxr.toml is not valid TOML"):
        load_settings(tmp_path, environ={})
