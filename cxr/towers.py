"""The served signature of a model's two towers, derived from its registry entry.

Export checks the ONNX graphs against it, config.pbtxt is generated from it, and clients build
their requests from it: one definition of names, dtypes and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr import tensor_names
from cxr.registry import ModelSpec


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]  # past the batch axis


@dataclass(frozen=True)
class TowerSpec:
    triton_name: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec


def image_tower(spec: ModelSpec) -> TowerSpec:
    size = spec.image_size
    return TowerSpec(
        spec.image_model,
        (TensorSpec(tensor_names.PIXELS, "uint8", (size, size, 3)),),
        TensorSpec(tensor_names.IMAGE_EMBEDS, "float32", (spec.embed_dim,)),
    )


def text_tower(spec: ModelSpec) -> TowerSpec:
    return TowerSpec(
        spec.text_model,
        tuple(TensorSpec(name, "int64", (spec.context_length,)) for name in spec.text_inputs),
        TensorSpec(tensor_names.TEXT_EMBEDS, "float32", (spec.embed_dim,)),
    )


def towers(spec: ModelSpec) -> tuple[TowerSpec, TowerSpec]:
    return image_tower(spec), text_tower(spec)


def tower_from_dict(raw: dict) -> TowerSpec:
    """A TowerSpec as stored in an export manifest (JSON)."""
    tensor = lambda t: TensorSpec(t["name"], t["dtype"], tuple(t["dims"]))  # noqa: E731
    return TowerSpec(raw["triton_name"], tuple(tensor(t) for t in raw["inputs"]), tensor(raw["output"]))
