"""`cxr export`: checkpoint -> two ONNX towers, config.pbtxt, tokenizer and manifest in the
Triton model repository.

Everything is written to a staging folder and checked first; only a complete, validated export
replaces what the repository held, so a failed export never breaks a served model.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from cxr.errors import ExportError
from cxr.files import replace_directory
from cxr.manifest import MANIFEST_FILE, ONNX_FILE, SCHEMA_VERSION, TOKENIZER_DIR, VERSION_DIR, read_manifest
from cxr.registry import ModelSpec
from cxr.settings import Settings
from cxr.tokenization import CLEANING
from cxr.towers import TowerSpec, towers
from export import onnx_export, triton_config
from export.checkpoints import Encoder, load_encoder

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
PACKAGES = ("torch", "transformers", "open_clip_torch", "onnx", "onnxruntime")


def resolve_source(spec: ModelSpec, settings: Settings, checkpoint: str | None) -> str:
    """Where weights come from: --checkpoint, else the registry's hub id, shipped weights or twin."""
    if checkpoint:
        return checkpoint
    if spec.is_embedded:
        from export.embedded import checkpoint_dir

        return str(checkpoint_dir(spec, settings.cache_dir, settings.data_dir))
    if spec.is_twin:
        from export.twins import twin_dir

        return str(twin_dir(spec, settings.cache_dir, settings.data_dir))
    return spec.checkpoint


def export_model(spec: ModelSpec, settings: Settings, checkpoint: str | None = None, target: str = "local",
                 fp16: bool = False, tensorrt: bool = False, log=print) -> dict:
    """Export both towers of `spec` into the model repository; returns the manifest."""
    started = time.perf_counter()
    source = resolve_source(spec, settings, checkpoint)
    log(f"loading {spec.name} from {source}")
    encoder = load_encoder(spec, source)
    _check_dims(spec, encoder)
    repo = settings.model_repository
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".staging-{spec.name}-", dir=repo) as staging:
        staging = Path(staging)
        image, text = towers(spec)
        exporters = {image: onnx_export.export_image_tower, text: onnx_export.export_text_tower}
        for tower, export in exporters.items():
            log(f"exporting {tower.triton_name}" + (" (fp16)" if fp16 else ""))
            onnx_path = staging / tower.triton_name / VERSION_DIR / ONNX_FILE
            export(encoder, spec, onnx_path, fp16=fp16)
            onnx_export.check_exported(onnx_path, {t.name: t.dims for t in tower.inputs}, tower.output.name,
                                       spec.embed_dim)
            _write_config(staging / tower.triton_name, tower, spec, target, tensorrt)
        encoder.save_tokenizer(staging / text.triton_name / TOKENIZER_DIR)
        manifest_text = json.dumps(_manifest(spec, encoder, staging, target, fp16, time.perf_counter() - started),
                                   indent=2)
        (staging / text.triton_name / MANIFEST_FILE).write_text(manifest_text)
        for tower in (image, text):
            replace_directory(staging / tower.triton_name, repo / tower.triton_name)
    manifest = json.loads(manifest_text)
    log(f"exported {spec.name} to {repo} in {manifest['export_seconds']:.1f} s")
    return manifest


def write_configs(spec: ModelSpec, settings: Settings, target: str, tensorrt: bool = False) -> None:
    """Rewrite only the config.pbtxt files of an exported model, e.g. to switch local <-> gpu."""
    manifest = read_manifest(settings.model_repository, spec.name)
    if manifest is None:
        raise ExportError(f"{spec.name} is not exported in {settings.model_repository}: "
                          f"run `make export MODEL={spec.name}` first.")
    for tower in towers(spec):
        _write_config(settings.model_repository / tower.triton_name, tower, spec, target, tensorrt)


def _check_dims(spec: ModelSpec, encoder: Encoder) -> None:
    found = {"image_size": encoder.image_size, "embed_dim": encoder.embed_dim}
    wanted = {"image_size": spec.image_size, "embed_dim": spec.embed_dim}
    if found != wanted:
        raise ExportError(f"checkpoint {encoder.source} has {found} but the registry entry {spec.name} says "
                          f"{wanted}: register this checkpoint as a model of its own (cxr/model_configs/).")


def _write_config(model_dir: Path, tower: TowerSpec, spec: ModelSpec, target: str, tensorrt: bool) -> None:
    config = triton_config.model_config(tower, spec.batching, target, tensorrt)
    (model_dir / "config.pbtxt").write_text(triton_config.to_pbtxt(config))
    if target == "local":
        shutil.copyfile(PYTHON_MODEL, model_dir / VERSION_DIR / "model.py")
    else:
        (model_dir / VERSION_DIR / "model.py").unlink(missing_ok=True)


def _manifest(spec: ModelSpec, encoder: Encoder, staging: Path, target: str, fp16: bool, seconds: float) -> dict:
    image, text = towers(spec)
    onnx = {}
    for tower in (image, text):
        path = staging / tower.triton_name / VERSION_DIR / ONNX_FILE
        onnx[tower.triton_name] = {
            "files": [p.name for p in onnx_export.onnx_files(path)],
            "bytes": sum(p.stat().st_size for p in onnx_export.onnx_files(path)),
            "sha256": onnx_export.sha256(path),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "model": spec.name,
        "family": spec.family,
        "embed_dim": spec.embed_dim,
        "image_size": spec.image_size,
        "context_length": spec.context_length,
        "tokenizer": {"kind": spec.tokenizer, "dir": TOKENIZER_DIR, "clean": CLEANING[spec.family]},
        "towers": {tower.triton_name: asdict(tower) for tower in (image, text)},
        "image_model": image.triton_name,
        "text_model": text.triton_name,
        "onnx": onnx,
        "precision": "fp16" if fp16 else "fp32",
        "target": target,
        "source": {"checkpoint": encoder.source, "revision": encoder.revision},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(seconds, 2),
        "versions": {name: version(name) for name in PACKAGES},
    }
