"""`cxr index synth`, in process (cxr_cli.main.main) with settings from CXR_* variables in a temporary
folder: it records the checksum of the export a gateway serves, so that the gateway's own check
(cxr.store.builds.check_model, through the backend's open) accepts the index; a model that is not
exported is refused with the command that exports it, and nothing is written (--unexported, for sizing
only, is tested in tests/unit/indexing/test_synthetic.py)."""

from __future__ import annotations

import json

import pytest

from cxr.catalog import ExportedModel
from cxr.registry import get_model
from cxr.settings import load_settings, to_environment
from cxr.store.faiss_backend import FaissBackend
from cxr_cli.main import main
from export.repository import export_model
from support import make_settings

MODEL = "siglip-tiny"


@pytest.fixture
def settings(tmp_path, cache_dir, monkeypatch):
    """Settings from the environment, in an empty working folder (no cxr.toml)."""
    settings = make_settings(tmp_path, cache_dir)
    monkeypatch.chdir(tmp_path)
    for name, value in to_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings().model_repository == settings.model_repository
    return settings


def test_synth_records_the_served_export_and_the_gateway_check_accepts_it(settings, capsys):
    export_model(get_model(MODEL), settings, log=lambda *_: None)
    served = ExportedModel.load(settings.model_repository, MODEL)
    assert main(["index", "synth", "--model", MODEL, "--count", "300", "--index-type", "flat"]) == 0
    assert f"wrote 300 synthetic {served.embed_dim}-d vectors" in capsys.readouterr().out
    manifest = json.loads((settings.index_path(MODEL) / "manifest.json").read_text())
    assert (manifest["export_sha256"], manifest["dim"]) == (served.export_sha256, served.embed_dim)
    store = FaissBackend(settings.index_dir).open(MODEL, dim=served.embed_dim, export_sha256=served.export_sha256)
    assert store.count == 300


def test_synth_of_a_model_not_exported_names_the_export_command_and_writes_nothing(settings, capsys):
    assert main(["index", "synth", "--model", MODEL, "--count", "300"]) == 2
    error = capsys.readouterr().err
    assert f"not exported in {settings.model_repository}" in error
    assert f"`cxr export --model {MODEL}`" in error and "--unexported" in error
    assert not settings.index_dir.exists() or not any(settings.index_dir.iterdir())
