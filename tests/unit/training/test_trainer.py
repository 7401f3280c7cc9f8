"""Short real training runs: cxr-mini from scratch (frozen MiniLM text, head tuning) and a HF
SigLIP twin (full text tuning), on a slice of the NIH sample."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cxr import archives
from cxr.errors import CxrError
from cxr.registry import get_model
from export.families import load_encoder
from support import DATA_DIR
from training import data
from training.config import TrainConfig
from training.trainer import STATE_FILE, Trainer

CONFIG = TrainConfig(epochs=2, batch_size=32, warmup_epochs=1, seed=3)


@pytest.fixture(scope="module")
def examples():
    records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")
    return data.examples_from(records)[::8]  # 100 images, normal and abnormal


@pytest.fixture(scope="module")
def scratch(cache_dir):
    from export.families import random_checkpoint_dir

    return str(random_checkpoint_dir(get_model("cxr-mini"), cache_dir / "scratch", DATA_DIR))


def _run(examples, init, out, config=CONFIG, model="cxr-mini"):
    trainer = Trainer(get_model(model), init, examples, out, config, log=lambda *_: None)
    trainer.fit()
    return trainer


def _history(out):
    return [line for line in (out / "history.jsonl").read_text().splitlines()]


def _without_seconds(lines):
    import json

    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(examples, scratch, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return _run(examples, scratch, out), out


def test_training_is_deterministic(uninterrupted, examples, scratch, tmp_path):
    trainer, out = uninterrupted
    again = _run(examples, scratch, tmp_path)
    assert _without_seconds(_history(out)) == _without_seconds(_history(tmp_path))
    first, second = trainer._trained_state(), again._trained_state()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert len(_history(out)) == CONFIG.epochs + 1  # epoch 0 = before training


def test_training_moves_the_image_tower_and_freezes_the_text_transformer(uninterrupted, scratch):
    trainer, _ = uninterrupted
    start = load_encoder(get_model("cxr-mini"), scratch).model.state_dict()
    end = trainer.encoder.model.state_dict()
    assert not torch.equal(start["visual.head.proj.weight"], end["visual.head.proj.weight"])
    assert not torch.equal(start["text.proj.weight"], end["text.proj.weight"])
    frozen = [k for k in start if k.startswith("text.transformer.")]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)


def test_a_killed_run_resumes_to_the_same_result(uninterrupted, examples, scratch, tmp_path, monkeypatch):
    trainer, out = uninterrupted
    original = Trainer._save_state

    def save_then_die(self):
        original(self)
        raise KeyboardInterrupt  # killed right after epoch 1 was saved

    monkeypatch.setattr(Trainer, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(examples, scratch, tmp_path)
    monkeypatch.setattr(Trainer, "_save_state", original)
    resumed = Trainer(get_model("cxr-mini"), scratch, examples, tmp_path, CONFIG, log=lambda *_: None)
    resumed.resume()
    assert resumed.epoch == 1
    resumed.fit()
    assert _without_seconds(_history(out)) == _without_seconds(_history(tmp_path))
    first, second = trainer._trained_state(), resumed._trained_state()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resume_refuses_other_settings(uninterrupted, examples, scratch):
    _, out = uninterrupted
    trainer = Trainer(get_model("cxr-mini"), scratch, examples, out, replace(CONFIG, lr=0.1), log=lambda *_: None)
    with pytest.raises(CxrError, match="different settings \\(lr\\)"):
        trainer.resume()


def test_best_checkpoint_loads_for_export_and_publishes_as_embedded_weights(uninterrupted, cache_dir, tmp_path):
    from export import embedded
    from training.validation import embed_images

    trainer, out = uninterrupted
    spec = get_model("cxr-mini")
    best = trainer.best_metrics()
    reloaded = Trainer(spec, str(out / "checkpoint"), trainer.valid_examples, tmp_path / "unused",
                       replace(CONFIG, valid_fraction=0.5), log=lambda *_: None)
    pixels = trainer.valid_pixels[:4]
    from_checkpoint = embed_images(reloaded.model, pixels)
    if best["epoch"] == CONFIG.epochs:
        assert np.allclose(from_checkpoint, embed_images(trainer.model, pixels), atol=1e-5)

    weights = tmp_path / "weights"
    shipped = embedded.publish(out / "checkpoint", spec, weights)
    assert shipped.stat().st_size < 20e6
    assembled = embedded.checkpoint_dir(spec, cache_dir, DATA_DIR, weights=weights)
    from_shipped = Trainer(spec, str(assembled), trainer.valid_examples, tmp_path / "unused2",
                           replace(CONFIG, valid_fraction=0.5), log=lambda *_: None)
    cosines = (embed_images(from_shipped.model, pixels) * from_checkpoint).sum(axis=1)
    assert cosines.min() > 0.999  # fp16 storage


def test_state_file_is_written_each_epoch(uninterrupted):
    _, out = uninterrupted
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["epoch"] == CONFIG.epochs
    assert not any(k.startswith("text.transformer.") for k in state["model"])


def test_hf_siglip_twin_fine_tunes_its_whole_text_tower(examples, cache_dir, tmp_path):
    from export.families import twin_dir

    spec = get_model("siglip-tiny")
    init = str(twin_dir(spec, cache_dir, DATA_DIR))
    with pytest.raises(CxrError, match="--text-tuning full"):
        Trainer(spec, init, examples[:40], tmp_path / "head", replace(CONFIG, epochs=1), log=lambda *_: None)
    trainer = _run(examples[:40], init, tmp_path / "full", replace(CONFIG, epochs=1, text_tuning="full"), "siglip-tiny")
    start = load_encoder(spec, init).model.state_dict()
    end = trainer.encoder.model.state_dict()
    text_keys = [k for k in start if k.startswith("text_model.encoder")]
    assert any(not torch.equal(start[k], end[k]) for k in text_keys)
    reloaded = load_encoder(spec, str(tmp_path / "full" / "checkpoint"))
    assert reloaded.embed_dim == spec.embed_dim
