"""Load a checkpoint (hub id or local directory) into two feature modules.

One loader per checkpoint layout (Hugging Face, open_clip; export/families.py says which family
uses which); each returns an `Encoder`: the image and text feature functions as torch modules,
the checkpoint's own tokenizer, and the dims read from the checkpoint.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from cxr.errors import CheckpointUnavailableError
from cxr.registry import ModelSpec

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


@dataclass
class Encoder:
    """A loaded checkpoint, reduced to what export and training need."""

    model: nn.Module  # the whole checkpoint model (what training updates)
    image_features: nn.Module  # normalised float [n, 3, size, size] -> [n, dim]
    text_features: nn.Module  # the spec's text inputs, int64 [n, context] -> [n, dim]
    tokenize: Callable[[list[str]], dict[str, np.ndarray]]  # the checkpoint's own tokenisation
    save_tokenizer: Callable[[Path], None]
    save_checkpoint: Callable[[Path], None]  # the family's own layout, loadable from a local dir again
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
                f"Pass --checkpoint a directory holding the full {spec.family.name} checkpoint "
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


def load_hf(spec: ModelSpec, source: str) -> Encoder:
    """A transformers checkpoint (CLIPModel, SiglipModel) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    with _explain_load_failure(spec, source):
        model = AutoModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    input_names = spec.text_inputs

    def tokenize(texts):
        enc = tokenizer(list(texts), max_length=spec.context_length, padding="max_length",
                        truncation=True, return_tensors="np")
        return {name: enc[name].astype(np.int64) for name in input_names}

    def save_checkpoint(out: Path) -> None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    config = model.config
    embed_dim = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
    return Encoder(model, _HfImageFeatures(model), _HfTextFeatures(model), tokenize, tokenizer.save_pretrained,
                   save_checkpoint,
                   image_size=config.vision_config.image_size, embed_dim=embed_dim,
                   source=source, revision=_hf_revision(model, source))


def load_open_clip(spec: ModelSpec, source: str) -> Encoder:
    """An open_clip checkpoint (hf-hub: or local-dir:) and its tokenizer."""
    import open_clip

    name = source if source.startswith(("hf-hub:", "local-dir:")) else (
        f"local-dir:{source}" if is_local(source) else f"hf-hub:{source}")
    with _explain_load_failure(spec, source):
        model = open_clip.create_model(name).eval()
        tokenizer = open_clip.get_tokenizer(name)

    def tokenize(texts):
        return {"input_ids": tokenizer(list(texts)).numpy().astype(np.int64)}

    def save_checkpoint(out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        (out / OPEN_CLIP_CONFIG).write_text(json.dumps(_open_clip_config(source), indent=2))
        tokenizer.save_pretrained(out)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / OPEN_CLIP_WEIGHTS)

    size = model.visual.image_size
    return Encoder(model, _OpenClipImageFeatures(model), _OpenClipTextFeatures(model), tokenize,
                   tokenizer.save_pretrained, save_checkpoint,
                   image_size=size[0] if isinstance(size, tuple) else size,
                   embed_dim=model.text.output_dim, source=source,
                   revision="local" if is_local(source) else "unknown")


def _open_clip_config(source: str) -> dict:
    """The open_clip_config.json a checkpoint came with (local dir or Hub)."""
    source = source.removeprefix("local-dir:").removeprefix("hf-hub:")
    if is_local(source):
        path = Path(source).expanduser() / OPEN_CLIP_CONFIG
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, OPEN_CLIP_CONFIG))
    return json.loads(path.read_text())

