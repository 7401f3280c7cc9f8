"""The model registry: one JSON per encoder in model_configs/, the single place that knows
a model's checkpoint, sizes, tokenizer and batching (open_clip's model_configs pattern)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from cxr import tensor_names
from cxr.errors import UnknownModelError
from cxr.families import Family, get_family

CONFIG_DIR = Path(__file__).parent / "model_configs"
TOKENIZERS = ("clip_bpe", "wordpiece", "sentencepiece")
IMAGE_NORMALIZATIONS = ("dataset", "per_image")
PRECISIONS = ("fp32", "fp16", "int8")  # of the exported ONNX weights
TWIN_PREFIX = "twin:"
# Weights the project trained and ships in the repository (weights/<name>/): no download.
EMBEDDED_PREFIX = "embedded:"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_us: int
    instance_count: int
    preferred_batch_sizes: tuple[int, ...] = ()
    # The text tower's settings where its measured best differs from the image tower's (`make tune`).
    text: Batching | None = None

    def for_tower(self, kind: str) -> Batching:
        """The settings of the "image" or "text" tower."""
        return self.text if kind == "text" and self.text is not None else self


def _batching(raw: dict) -> Batching:
    """A "batching" object: shared fields, and a "text" object of the text tower's own values."""
    raw = dict(raw)
    text = raw.pop("text", None)
    raw["preferred_batch_sizes"] = tuple(raw.get("preferred_batch_sizes", ()))
    base = Batching(**raw)
    if text is None:
        return base
    text = dict(text, preferred_batch_sizes=tuple(text.get("preferred_batch_sizes", ())))
    return replace(base, text=replace(base, **text))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family  # named in the JSON, resolved by cxr.families.get_family
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
    # What `cxr export` writes per target when no precision flag is given, e.g. {"local": "int8"}
    # (chosen by benchmarks/quantization.py); unnamed targets get fp32.
    precision: dict = field(default_factory=dict)

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
        return self.family.text_inputs

    @property
    def text_padding(self) -> str:
        """"longest" (the text tower has a dynamic sequence axis) or "max_length" (fixed)."""
        return self.family.text_padding

    @property
    def image_model(self) -> str:
        return tensor_names.image_model(self.name)

    @property
    def text_model(self) -> str:
        return tensor_names.text_model(self.name)


def _parse(name: str, raw: dict) -> ModelSpec:
    raw = dict(raw, name=name)
    try:
        raw["family"] = get_family(raw["family"])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    raw["batching"] = _batching(raw["batching"])
    for key in ("mean", "std", "alternative_checkpoints"):
        if key in raw:
            raw[key] = tuple(raw[key])
    spec = ModelSpec(**raw)
    if spec.image_normalization not in IMAGE_NORMALIZATIONS:
        raise ValueError(f"{name}: image_normalization {spec.image_normalization!r} is not one of "
                         f"{IMAGE_NORMALIZATIONS}")
    if spec.tokenizer not in TOKENIZERS:
        raise ValueError(f"{name}: tokenizer {spec.tokenizer!r} is not one of {TOKENIZERS}")
    bad = {target: p for target, p in spec.precision.items() if p not in PRECISIONS}
    if bad:
        raise ValueError(f"{name}: precision {bad} is not one of {PRECISIONS}")
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
