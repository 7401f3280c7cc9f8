"""The served signature of a model's two towers, derived from its registry entry.

Export checks the ONNX graphs against it, config.pbtxt is generated from it, and clients build
their requests from it: one definition of names, dtypes and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr import tensor_names
from cxr.registry import ModelSpec

DYNAMIC = -1  # a dim of any size, as config.pbtxt writes it
SMALLEST_BUCKET = 16  # a typical query's ~10 tokens


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]  # past the batch axis; DYNAMIC where any size goes

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of `shape` (past the batch axis) fits these dims."""
        return len(shape) == len(self.dims) and all(d in (DYNAMIC, s) for d, s in zip(self.dims, shape))


@dataclass(frozen=True)
class TowerSpec:
    triton_name: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    # The longest sequence a text tower with a dynamic sequence axis takes (its context length).
    max_sequence: int | None = None

    @property
    def dynamic_sequence(self) -> bool:
        return self.max_sequence is not None


def image_tower(spec: ModelSpec) -> TowerSpec:
    size = spec.image_size
    return TowerSpec(
        spec.image_model,
        (TensorSpec(tensor_names.PIXELS, "uint8", (size, size, 3)),),
        TensorSpec(tensor_names.IMAGE_EMBEDS, "float32", (spec.embed_dim,)),
    )


def text_tower(spec: ModelSpec) -> TowerSpec:
    dynamic = spec.text_padding == "longest"
    length = DYNAMIC if dynamic else spec.context_length
    return TowerSpec(
        spec.text_model,
        tuple(TensorSpec(name, "int64", (length,)) for name in spec.text_inputs),
        TensorSpec(tensor_names.TEXT_EMBEDS, "float32", (spec.embed_dim,)),
        max_sequence=spec.context_length if dynamic else None,
    )


def towers(spec: ModelSpec) -> tuple[TowerSpec, TowerSpec]:
    return image_tower(spec), text_tower(spec)


def tower_from_dict(raw: dict) -> TowerSpec:
    """A TowerSpec as stored in an export manifest (JSON)."""
    tensor = lambda t: TensorSpec(t["name"], t["dtype"], tuple(t["dims"]))  # noqa: E731
    return TowerSpec(raw["triton_name"], tuple(tensor(t) for t in raw["inputs"]), tensor(raw["output"]),
                     raw.get("max_sequence"))


def pad_values(input_names: tuple[str, ...], pad_id: int) -> dict[str, int]:
    """What each text input is padded with: the tokenizer's pad id, and 0 (masked) in the mask."""
    values = {tensor_names.INPUT_IDS: pad_id, tensor_names.ATTENTION_MASK: 0}
    return {name: values[name] for name in input_names}


def sequence_buckets(max_sequence: int) -> tuple[int, ...]:
    """The sequence lengths a client pads to where the server cannot pad (16, 32, 64, ..., max)."""
    buckets, length = [], SMALLEST_BUCKET
    while length < max_sequence:
        buckets.append(length)
        length *= 2
    return (*buckets, max_sequence)


def bucket_length(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `length` tokens."""
    return next((b for b in buckets if b >= length), buckets[-1])


def pad_sequences(arrays: dict[str, np.ndarray], length: int, values: dict[str, int]) -> dict[str, np.ndarray]:
    """Each [n, l] array right-padded with its pad value to [n, length] (l <= length)."""
    return {name: np.pad(a, ((0, 0), (0, length - a.shape[1])), constant_values=values[name])
            for name, a in arrays.items()}
