"""What a client of the served towers knows of each exported model: manifest, tower signatures, tokenizer.

A text tower with a dynamic sequence axis takes texts padded to the longest of the call; where the
served config does not let Triton pad ragged batches (the gpu target), the tokens are padded on to
a bucket length so that requests of one bucket batch together (export/triton_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cxr.errors import UnknownModelError
from cxr.manifest import exported_models, read_export_manifest, tokenizer_dir
from cxr.tokenization import TextTokenizer
from cxr.towers import TowerSpec, bucket_length, pad_sequences, pad_values, sequence_buckets, tower_from_dict


@dataclass
class ExportedModel:
    name: str
    manifest: dict
    image: TowerSpec
    text: TowerSpec
    tokenizer: TextTokenizer | BucketedTokenizer
    max_batch_size: int

    @property
    def embed_dim(self) -> int:
        return self.manifest["embed_dim"]

    @property
    def image_size(self) -> int:
        return self.manifest["image_size"]

    @property
    def export_sha256(self) -> str:
        """The served image tower's checksum: an index records it and is refused by another export."""
        return self.manifest["onnx"][self.image.triton_name]["sha256"]

    @classmethod
    def load(cls, model_repository: Path, name: str) -> "ExportedModel":
        manifest = read_export_manifest(model_repository, name)
        if manifest is None:
            raise UnknownModelError(f"model {name!r} is not exported in {model_repository}; exported: "
                                    f"{exported_models(model_repository)}. Run `make export MODEL={name}`.")
        image = tower_from_dict(manifest["towers"][manifest["image_model"]])
        text = tower_from_dict(manifest["towers"][manifest["text_model"]])
        config = _served_config(model_repository, image.triton_name)
        tokenizer = _tokenizer(model_repository, manifest, text, _served_config(model_repository, text.triton_name))
        return cls(name, manifest, image, text, tokenizer, config.max_batch_size)


class BucketedTokenizer:
    """The tokenizer's output padded on to the next bucket length (cxr.towers.sequence_buckets)."""

    def __init__(self, tokenizer: TextTokenizer, max_sequence: int):
        self._tokenizer = tokenizer
        self.buckets = sequence_buckets(max_sequence)
        self._pad_values = pad_values(tokenizer.input_names, tokenizer.pad_id)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        tokens = self._tokenizer(texts)
        length = bucket_length(next(iter(tokens.values())).shape[1], self.buckets)
        return pad_sequences(tokens, length, self._pad_values)


def _tokenizer(model_repository: Path, manifest: dict, text: TowerSpec,
               text_config: model_config_pb2.ModelConfig) -> TextTokenizer | BucketedTokenizer:
    """The exported tokenizer, padding as the served text tower wants: to the context length (fixed
    length), to the longest text (Triton pads ragged batches) or to a bucket (it cannot)."""
    settings = manifest["tokenizer"]
    padding = settings.get("padding", "max_length")  # exports before dynamic sequence axes were fixed
    tokenizer = TextTokenizer(tokenizer_dir(model_repository, manifest["model"]), manifest["context_length"],
                              tuple(t.name for t in text.inputs), settings["clean"], padding=padding)
    ragged = all(i.allow_ragged_batch for i in text_config.input)
    if padding == "longest" and not ragged:
        return BucketedTokenizer(tokenizer, text.max_sequence)
    return tokenizer


def _served_config(model_repository: Path, triton_name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_repository / triton_name / "config.pbtxt").read_text(),
                             model_config_pb2.ModelConfig())


def load_catalog(model_repository: Path) -> dict[str, ExportedModel]:
    return {name: ExportedModel.load(model_repository, name) for name in exported_models(model_repository)}
