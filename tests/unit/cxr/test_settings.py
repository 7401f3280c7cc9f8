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


def test_a_config_file_that_is_not_toml_is_named(tmp_path):
    (tmp_path / "cxr.toml").write_text("[cxr\nmodel = 'siglip'\n")
    with pytest.raises(SettingsError, match="cxr.toml is not valid TOML"):
        load_settings(tmp_path, environ={})
