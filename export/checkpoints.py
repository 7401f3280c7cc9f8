"""Load a registry model's checkpoint (hub id or local directory) into two feature modules.

One loader per family; each returns an `Encoder`: the image and text feature functions as
torch modules, the checkpoint's own tokenizer, and the dims read from the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxr.errors import CheckpointUnavailableError
from cxr.registry import ModelSpec


@dataclass
class Encoder:
    """A loaded checkpoint, reduced to what export needs."""

    image_features: nn.Module  # normalised float [n, 3, size, size] -> [n, dim]
    text_features: nn.Module  # the spec's text inputs, int64 [n, context] -> [n, dim]
    tokenize: Callable[[list[str]], dict[str, np.ndarray]]  # the checkpoint's own tokenisation
    save_tokenizer: Callable[[Path], None]
    image_size: int
    embed_dim: int
    source: str
    revision: str


class _HfImageFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


class _HfTextFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class _OpenClipImageFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


class _OpenClipTextFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


def is_local(source: str) -> bool:
    """A checkpoint given as a path rather than a hub id."""
    return source.startswith(("/", ".", "~", "local-dir:")) or Path(source).exists()


@contextmanager
def _explain_load_failure(spec: ModelSpec, source: str):
    """Turn the many ways a download or local load fails into one actionable message."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every loader failure ends here, re-raised with advice
        raise CheckpointUnavailableError(_load_failure_message(spec, source, exc)) from exc


def _load_failure_message(spec: ModelSpec, source: str, exc: Exception) -> str:
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if is_local(source):
        return (f"Could not load {spec.name} from the local directory {source!r}: {cause}. "
                f"Pass --checkpoint a directory holding the full {spec.family} checkpoint "
                f"(as saved by save_pretrained or downloaded from {spec.checkpoint}).")
    names = " ".join(type(e).__name__ for e in _causes(exc))
    gated = "GatedRepo" in names or "401" in cause or "403" in cause
    lines = [f"Could not download {spec.name} weights from the Hugging Face Hub id {source!r}: {cause}."]
    if gated or spec.licence:
        lines.append(f"This model is gated ({spec.licence or 'accept its licence on the Hub'}); "
                     "with access granted, set HF_TOKEN or run `hf auth login`.")
    lines.append("Where this machine has no internet, download the checkpoint elsewhere "
                 f"(`hf download {source.removeprefix('hf-hub:')} --local-dir DIR`), copy it here "
                 f"and run `make export MODEL={spec.name} CHECKPOINT=DIR`.")
    return " ".join(lines)


def _causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _hf_revision(model, source: str) -> str:
    return "local" if is_local(source) else (getattr(model.config, "_commit_hash", None) or "unknown")


def _load_hf(spec: ModelSpec, source: str) -> Encoder:
    from transformers import AutoModel, AutoTokenizer

    with _explain_load_failure(spec, source):
        model = AutoModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    input_names = spec.text_inputs

    def tokenize(texts):
        enc = tokenizer(list(texts), max_length=spec.context_length, padding="max_length",
                        truncation=True, return_tensors="np")
        return {name: enc[name].astype(np.int64) for name in input_names}

    config = model.config
    embed_dim = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
    return Encoder(_HfImageFeatures(model), _HfTextFeatures(model), tokenize, tokenizer.save_pretrained,
                   image_size=config.vision_config.image_size, embed_dim=embed_dim,
                   source=source, revision=_hf_revision(model, source))


def _load_open_clip(spec: ModelSpec, source: str) -> Encoder:
    import open_clip

    name = source if source.startswith(("hf-hub:", "local-dir:")) else (
        f"local-dir:{source}" if is_local(source) else f"hf-hub:{source}")
    with _explain_load_failure(spec, source):
        model = open_clip.create_model(name).eval()
        tokenizer = open_clip.get_tokenizer(name)

    def tokenize(texts):
        return {"input_ids": tokenizer(list(texts)).numpy().astype(np.int64)}

    size = model.visual.image_size
    return Encoder(_OpenClipImageFeatures(model), _OpenClipTextFeatures(model), tokenize,
                   tokenizer.save_pretrained, image_size=size[0] if isinstance(size, tuple) else size,
                   embed_dim=model.text.output_dim, source=source,
                   revision="local" if is_local(source) else "unknown")


LOADERS = {"hf_clip": _load_hf, "hf_siglip": _load_hf, "open_clip": _load_open_clip}


def load_encoder(spec: ModelSpec, source: str) -> Encoder:
    """Load `spec`'s checkpoint from `source` (a hub id or a local directory) for export."""
    if is_local(source) and not Path(source.removeprefix("local-dir:")).expanduser().is_dir():
        raise CheckpointUnavailableError(
            f"Checkpoint directory {source!r} for {spec.name} does not exist. "
            f"Pass --checkpoint an existing directory, or omit it to use {spec.checkpoint}.")
    torch.set_grad_enabled(False)
    return LOADERS[spec.family](spec, source)
