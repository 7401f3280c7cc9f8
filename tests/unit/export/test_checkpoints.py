"""Loading fails with a message that names the model, the hub id and the remedy."""

import pytest

from cxr.errors import CheckpointUnavailableError
from cxr.registry import get_model
from export.families import load_encoder


@pytest.fixture
def offline(monkeypatch):
    """No network here either way; HF_HUB_OFFLINE makes the failure immediate instead of retried."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", ["pubmed_clip", "biomedclip", "siglip"])
def test_unreachable_hub_names_model_hub_id_and_local_dir_remedy(name, offline):
    spec = get_model(name)
    with pytest.raises(CheckpointUnavailableError) as error:
        load_encoder(spec, spec.checkpoint)
    message = str(error.value)
    assert name in message
    assert spec.checkpoint.removeprefix("hf-hub:") in message
    assert "CHECKPOINT=DIR" in message and "hf download" in message


def test_gated_model_mentions_licence_and_token(offline):
    spec = get_model("medsiglip")
    with pytest.raises(CheckpointUnavailableError) as error:
        load_encoder(spec, spec.checkpoint)
    message = str(error.value)
    assert "google/medsiglip-448" in message
    assert "HF_TOKEN" in message and "Health AI Developer Foundations" in message


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointUnavailableError, match="does not exist"):
        load_encoder(get_model("siglip"), str(missing))


def test_local_directory_without_a_checkpoint_is_explained(tmp_path):
    (tmp_path / "README.md").write_text("not a checkpoint")
    with pytest.raises(CheckpointUnavailableError) as error:
        load_encoder(get_model("siglip"), str(tmp_path))
    assert "local directory" in str(error.value) and str(tmp_path) in str(error.value)
