"""What a client of the served towers knows of each exported model: manifest, tower signatures, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cxr.errors import UnknownModelError
from cxr.manifest import exported_models, read_manifest, tokenizer_dir
from cxr.tokenization import TextTokenizer
from cxr.towers import TowerSpec, tower_from_dict


@dataclass
class ExportedModel:
    name: str
    manifest: dict
    image: TowerSpec
    text: TowerSpec
    tokenizer: TextTokenizer
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
        manifest = read_manifest(model_repository, name)
        if manifest is None:
            raise UnknownModelError(f"model {name!r} is not exported in {model_repository}; exported: "
                                    f"{exported_models(model_repository)}. Run `make export MODEL={name}`.")
        image = tower_from_dict(manifest["towers"][manifest["image_model"]])
        text = tower_from_dict(manifest["towers"][manifest["text_model"]])
        tokenizer = TextTokenizer(tokenizer_dir(model_repository, name), manifest["context_length"],
                                  tuple(t.name for t in text.inputs), manifest["tokenizer"]["clean"])
        config = text_format.Parse((model_repository / image.triton_name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        return cls(name, manifest, image, text, tokenizer, config.max_batch_size)


def load_catalog(model_repository: Path) -> dict[str, ExportedModel]:
    return {name: ExportedModel.load(model_repository, name) for name in exported_models(model_repository)}
