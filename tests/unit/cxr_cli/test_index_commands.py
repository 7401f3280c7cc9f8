"""`cxr index synth`, in process (cxr_cli.main.main) with settings from CXR_* variables in a temporary
folder: it records the checksum of the export a gateway serves, so that the gateway's own check
(cxr.store.builds.check_model, through the backend's open) accepts the index; a model that is not
exported is refused with the command that exports it, and nothing is written (--unexported, for sizing
only, is tested in tests/unit/indexing/test_synthetic.py).

`cxr index follow --deletions-listen`: its parsing, and its refusal of --once. `cxr index delete |
compact`: their parsing, and what they ask of the settings' store backend (a recording
fake in place of cxr.store.factory.backend; the real FAISS one in tests/integration/cxr_cli)."""

from __future__ import annotations

import json

import pytest

from cxr.catalog import ExportedModel
from cxr.registry import get_model
from cxr.settings import load_settings, to_environment
from cxr.store import factory
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change, Committed, StoreBackend
from cxr_cli import exit_codes
from cxr_cli.index_commands import cmd_index_compact, cmd_index_delete
from cxr_cli.main import build_parser, main
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
    assert main(["index", "synth", "--model", MODEL, "--count", "300"]) == exit_codes.NOT_FOUND
    error = capsys.readouterr().err
    assert f"not exported in {settings.model_repository}" in error
    assert f"`cxr export --model {MODEL}`" in error and "--unexported" in error
    assert not settings.index_dir.exists() or not any(settings.index_dir.iterdir())


class RecordingBackend(StoreBackend):
    """A store backend that records the commits and compactions asked of it and answers as told."""

    name = "faiss"

    def __init__(self, deleted: int = 2, compacted: dict | None = None):
        self.deleted, self.compacted = deleted, compacted
        self.changes, self.compactions, self.calibrations, self.closed = [], [], [], False

    def where(self, model):
        return f"indexes/{model}"

    def version(self, model):
        return 1

    def open(self, model, dim=None, export_sha256=None):
        raise AssertionError("deletions and compaction write through the backend; they open no store")

    def writer(self, *args, **kwargs):
        raise AssertionError("no build is written")

    def apply(self, model, change):
        self.changes.append((model, change))
        return Committed(generation=3, deleted=self.deleted)

    def pending(self, model):
        return 5

    def compact(self, model):
        self.compactions.append(model)
        return self.compacted

    def set_calibration(self, model, calibration):
        self.calibrations.append((model, calibration))

    def close(self):
        self.closed = True


@pytest.fixture
def backend(settings, monkeypatch):
    made = RecordingBackend()
    monkeypatch.setattr(factory, "backend", lambda given: made)
    return made


@pytest.mark.parametrize("argv, study, image, model", [
    (["index", "delete", "--study", "1.2.3"], "1.2.3", None, None),
    (["index", "delete", "--image", "00000002_000.png", "--model", MODEL], None, "00000002_000.png", MODEL),
])
def test_delete_takes_a_study_or_an_image(argv, study, image, model):
    args = build_parser().parse_args(argv)
    assert (args.study, args.image, args.model, args.func) == (study, image, model, cmd_index_delete)


@pytest.mark.parametrize("argv", [["index", "delete"], ["index", "delete", "--study", "1", "--image", "2"]])
def test_delete_needs_exactly_one_of_study_and_image(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == exit_codes.USAGE and "--study" in capsys.readouterr().err


def test_compact_takes_a_model():
    args = build_parser().parse_args(["index", "compact", "--model", MODEL])
    assert (args.model, args.func) == (MODEL, cmd_index_compact)
    assert build_parser().parse_args(["index", "compact"]).model is None


def test_delete_commits_through_the_backend_and_says_what_went(settings, backend, capsys):
    assert main(["index", "delete", "--study", "1.2.3", "--model", MODEL]) == 0
    assert backend.changes == [(MODEL, Change(study_uids=("1.2.3",)))] and backend.closed
    out = capsys.readouterr().out
    assert f"deleted 2 images from the {MODEL} index at indexes/{MODEL} (generation 3)" in out
    assert f"within {settings.index_changes_poll_s:g} s" in out


def test_delete_of_what_is_not_indexed_fails_with_the_remedy(settings, backend, capsys):
    backend.deleted = 0
    assert main(["index", "delete", "--image", "7", "--model", MODEL]) == exit_codes.NOT_FOUND
    error = capsys.readouterr().err
    assert "nothing indexed under that id" in error and "already deleted or never indexed" in error
    assert backend.changes == [(MODEL, Change(image_ids=("7",)))] and backend.closed


def test_delete_of_an_unknown_model_names_the_known_ones_and_commits_nothing(settings, backend, capsys):
    assert main(["index", "delete", "--study", "1.2.3", "--model", "no-such-model"]) == exit_codes.NOT_FOUND
    assert "Available" in capsys.readouterr().err and backend.changes == []


@pytest.mark.parametrize("compacted, words", [(None, "nothing to fold"), ({"count": 10}, "10 images")])
def test_compact_says_what_it_did(settings, backend, capsys, compacted, words):
    backend.compacted = compacted
    assert main(["index", "compact", "--model", MODEL]) == 0
    assert backend.compactions == [MODEL] and backend.closed
    assert words in capsys.readouterr().out


def test_follow_takes_an_address_for_deletion_notices_and_refuses_it_with_once(settings, capsys):
    args = build_parser().parse_args(["index", "follow", "--dicomweb", "http://pacs/dicom-web",
                                      "--deletions-listen", "127.0.0.1:8099"])
    assert args.deletions_listen == "127.0.0.1:8099" and not args.once
    assert build_parser().parse_args(["index", "follow", "--dicomweb", "http://pacs/dicom-web"]).deletions_listen is None
    assert main(["index", "follow", "--dicomweb", "http://pacs/dicom-web", "--deletions-listen", "8099", "--once"]) == 2
    assert "--deletions-listen keeps listening for Orthanc's notices: drop --once" in capsys.readouterr().err
