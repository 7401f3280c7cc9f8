"""The export manifest: what a client of the served towers needs, written beside the text model.

Holds the dims, image size, context length, tensor names, tokenizer folder, ONNX checksums and
the checkpoint an export came from. The gateway and `cxr models` read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr import tensor_names

MANIFEST_FILE = "cxr_manifest.json"
TOKENIZER_DIR = "tokenizer"
VERSION_DIR = "1"
ONNX_FILE = "model.onnx"
SCHEMA_VERSION = 1


def manifest_path(model_repository: Path, model: str) -> Path:
    return model_repository / tensor_names.text_model(model) / MANIFEST_FILE


def tokenizer_dir(model_repository: Path, model: str) -> Path:
    return model_repository / tensor_names.text_model(model) / TOKENIZER_DIR


def read_export_manifest(model_repository: Path, model: str) -> dict | None:
    """The manifest of an exported model, or None when `model` has not been exported."""
    path = manifest_path(model_repository, model)
    return json.loads(path.read_text()) if path.is_file() else None


def exported_models(model_repository: Path) -> list[str]:
    """Models with a manifest in the repository."""
    return sorted(json.loads(p.read_text())["model"]
                  for p in model_repository.glob(f"*{tensor_names.TEXT_SUFFIX}/{MANIFEST_FILE}"))
