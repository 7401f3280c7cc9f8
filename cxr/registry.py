"""The model registry: one JSON per encoder in model_configs/, the single place that knows
a model's checkpoint, sizes, tokenizer and batching (open_clip's model_configs pattern)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cxr import tensor_names
from cxr.errors import UnknownModelError

CONFIG_DIR = Path(__file__).parent / "model_configs"
FAMILIES = ("hf_clip", "open_clip", "hf_siglip")
TOKENIZERS = ("clip_bpe", "wordpiece", "sentencepiece")
IMAGE_NORMALIZATIONS = ("dataset", "per_image")
TWIN_PREFIX = "twin:"
# Weights the project trained and ships in the repository (weights/<name>/): no download.
EMBEDDED_PREFIX = "embedded:"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Which text inputs each family's text tower takes; SigLIP was trained without a padding mask
# and open_clip derives its mask from the pad id inside the model.
TEXT_INPUTS = {
    "hf_clip": (tensor_names.INPUT_IDS, tensor_names.ATTENTION_MASK),
    "open_clip": (tensor_names.INPUT_IDS,),
    "hf_siglip": (tensor_names.INPUT_IDS,),
}


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_us: int
    instance_count: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    checkpoint: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    context_length: int
    tokenizer: str
    batching: Batching
    use: str  # when to use it, in a few words (`cxr models`)
    notes: str
    # Config kwargs of each tower at this model's size: what twins are built from, and what the
    # benchmarks build true-size random-weight copies from (weights do not change speed).
    architecture: dict = field(default_factory=dict)
    # "dataset": (x / 255 - mean) / std; "per_image": each image to zero mean, unit variance.
    image_normalization: str = "dataset"
    twin_of: str | None = None
    alternative_checkpoints: tuple[str, ...] = ()
    licence: str | None = None
    demo: bool = False  # trained here to show the service working, not for clinical use

    @property
    def not_clinical(self) -> bool:
        """A demo model or a random-weight twin: user interfaces say so."""
        return self.demo or self.twin_of is not None

    @property
    def is_twin(self) -> bool:
        return self.checkpoint.startswith(TWIN_PREFIX)

    @property
    def is_embedded(self) -> bool:
        return self.checkpoint.startswith(EMBEDDED_PREFIX)

    @property
    def embedded_weights(self) -> Path:
        """The folder of shipped weights an `embedded:` checkpoint names, relative to the repository."""
        return REPO_ROOT / self.checkpoint.removeprefix(EMBEDDED_PREFIX)

    @property
    def text_inputs(self) -> tuple[str, ...]:
        return TEXT_INPUTS[self.family]

    @property
    def image_model(self) -> str:
        return tensor_names.image_model(self.name)

    @property
    def text_model(self) -> str:
        return tensor_names.text_model(self.name)


def _parse(name: str, raw: dict) -> ModelSpec:
    raw = dict(raw, name=name)
    raw["batching"] = Batching(**raw["batching"])
    for key in ("mean", "std", "alternative_checkpoints"):
        if key in raw:
            raw[key] = tuple(raw[key])
    spec = ModelSpec(**raw)
    if spec.family not in FAMILIES:
        raise ValueError(f"{name}: family {spec.family!r} is not one of {FAMILIES}")
    if spec.image_normalization not in IMAGE_NORMALIZATIONS:
        raise ValueError(f"{name}: image_normalization {spec.image_normalization!r} is not one of "
                         f"{IMAGE_NORMALIZATIONS}")
    if spec.tokenizer not in TOKENIZERS:
        raise ValueError(f"{name}: tokenizer {spec.tokenizer!r} is not one of {TOKENIZERS}")
    return spec


@cache
def _load_all() -> dict[str, ModelSpec]:
    return {
        path.stem: _parse(path.stem, json.loads(path.read_text()))
        for path in sorted(CONFIG_DIR.glob("*.json"))
    }


def list_models(include_twins: bool = True) -> list[str]:
    """Registered model names, real checkpoints first."""
    specs = _load_all().values()
    return [s.name for s in sorted(specs, key=lambda s: (s.is_twin, s.name)) if include_twins or not s.is_twin]


def get_model(name: str) -> ModelSpec:
    """The registry entry for `name`; an unknown name lists the known ones."""
    try:
        return _load_all()[name]
    except KeyError:
        raise UnknownModelError(
            f"Model config for {name!r} not found. Available: {list_models()}"
        ) from None
