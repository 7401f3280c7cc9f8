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

import numpy as np

from cxr.errors import CxrError, ExportError
from cxr.files import replace_directory
from cxr.manifest import MANIFEST_FILE, ONNX_FILE, SCHEMA_VERSION, TOKENIZER_DIR, VERSION_DIR, read_export_manifest
from cxr.registry import ModelSpec
from cxr.settings import Settings
from cxr.tokenization import TextTokenizer
from cxr.towers import TowerSpec, tower_from_dict, towers
from export import onnx_export, triton_config
from export.checkpoints import Encoder
from export.families import load_encoder
from export.quantization import check_precision, quantize_int8

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
FP32_DIR = "fp32"  # in staging, beside the tower folders: never moved into the repository
PACKAGES = ("torch", "transformers", "open_clip_torch", "onnx", "onnxruntime")


def resolve_source(spec: ModelSpec, settings: Settings, checkpoint: str | None) -> str:
    """Where weights come from: --checkpoint, else the registry's hub id, shipped weights or twin."""
    if checkpoint:
        return checkpoint
    if spec.is_embedded:
        from export.embedded import checkpoint_dir

        return str(checkpoint_dir(spec, settings.cache_dir, settings.data_dir))
    if spec.is_twin:
        from export.families import twin_dir

        return str(twin_dir(spec, settings.cache_dir, settings.data_dir))
    return spec.checkpoint


def export_model(spec: ModelSpec, settings: Settings, checkpoint: str | None = None, target: str = "local",
                 precision: str | None = None, tensorrt: bool = False, log=print) -> dict:
    """Export both towers of `spec` into the model repository; returns the manifest. `precision`:
    fp32, fp16 or int8 (None: the registry's choice for `target`)."""
    started = time.perf_counter()
    precision = precision or default_precision(spec, target)
    check_precision(precision, target)
    source = resolve_source(spec, settings, checkpoint)
    log(f"loading {spec.name} from {source}")
    encoder = load_encoder(spec, source)
    _check_dims(spec, encoder)
    repo = settings.model_repository
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".staging-{spec.name}-", dir=repo) as staging:
        staging = Path(staging)
        image, text = towers(spec)
        pad_id = onnx_export.text_pad_id(encoder)
        exporters = {image: onnx_export.export_image_tower, text: onnx_export.export_text_tower}
        for tower, export in exporters.items():
            log(f"exporting {tower.triton_name} ({precision})")
            onnx_path = staging / tower.triton_name / VERSION_DIR / ONNX_FILE
            _export_tower(export, encoder, spec, onnx_path, precision, staging / FP32_DIR / tower.triton_name)
            onnx_export.check_exported(onnx_path, {t.name: t.dims for t in tower.inputs}, tower.output.name,
                                       spec.embed_dim)
            _write_config(staging / tower.triton_name, tower, spec, target, tensorrt, pad_id)
        _save_tokenizer(spec, encoder, staging / text.triton_name / TOKENIZER_DIR)
        manifest_text = json.dumps(_manifest(spec, encoder, staging, target, precision, time.perf_counter() - started),
                                   indent=2)
        (staging / text.triton_name / MANIFEST_FILE).write_text(manifest_text)
        for tower in (image, text):
            replace_directory(staging / tower.triton_name, repo / tower.triton_name)
    manifest = json.loads(manifest_text)
    log(f"exported {spec.name} to {repo} in {manifest['export_seconds']:.1f} s")
    return manifest


def default_precision(spec: ModelSpec, target: str) -> str:
    """The registry's precision for `target` (`"precision": {"local": "int8"}`), else fp32."""
    return spec.precision.get(target, "fp32")


def _export_tower(export, encoder: Encoder, spec: ModelSpec, onnx_path: Path, precision: str,
                  fp32_dir: Path) -> None:
    """int8 quantises an fp32 export kept outside the tower's folder, so only int8 is served."""
    if precision != "int8":
        export(encoder, spec, onnx_path, fp16=precision == "fp16")
        return
    fp32_path = fp32_dir / ONNX_FILE
    export(encoder, spec, fp32_path)
    quantize_int8(fp32_path, onnx_path)


def write_configs(spec: ModelSpec, settings: Settings, target: str, tensorrt: bool = False) -> None:
    """Rewrite only the config.pbtxt files of an exported model, e.g. to switch local <-> gpu."""
    manifest = read_export_manifest(settings.model_repository, spec.name)
    if manifest is None:
        raise ExportError(f"{spec.name} is not exported in {settings.model_repository}: "
                          f"run `make export MODEL={spec.name}` first.")
    for tower in towers(spec):
        if tower_from_dict(manifest["towers"][tower.triton_name]) != tower:
            raise ExportError(f"{tower.triton_name} was exported with another signature than the registry's "
                              f"(e.g. a fixed text length): run `make export MODEL={spec.name}` again.")
    pad_id = manifest["tokenizer"].get("pad_id")
    for tower in towers(spec):
        _write_config(settings.model_repository / tower.triton_name, tower, spec, target, tensorrt, pad_id)


def _check_dims(spec: ModelSpec, encoder: Encoder) -> None:
    found = {"image_size": encoder.image_size, "embed_dim": encoder.embed_dim}
    wanted = {"image_size": spec.image_size, "embed_dim": spec.embed_dim}
    if found != wanted:
        raise ExportError(f"checkpoint {encoder.source} has {found} but the registry entry {spec.name} says "
                          f"{wanted}: register this checkpoint as a model of its own (cxr/model_configs/).")


# Texts on which the served tokenizer must give the checkpoint's own ids, checked at every export:
# case, HTML entities, punctuation, non-ASCII, literal special tokens, empty, longer than any context.
TOKENIZER_PROBES = ("Small LEFT pleural effusion &amp; cardiomegaly.", "", "T2-weighted, 3.5 cm; (R) > (L)?",
                    "Café naïve 中文 😀", "</s> <unk> [SEP] <|endoftext|>", "no acute disease. " * 200)


def _save_tokenizer(spec: ModelSpec, encoder: Encoder, directory: Path) -> None:
    """Save the checkpoint's tokenizer and prove the serving side (no transformers) reads it back exactly."""
    encoder.save_tokenizer(directory)
    try:
        served = TextTokenizer(directory, spec.context_length, spec.text_inputs, spec.family.text_cleaning)
    except CxrError as exc:
        raise ExportError(f"the tokenizer of {encoder.source} cannot be served: {exc}") from exc
    ours, theirs = served(list(TOKENIZER_PROBES)), encoder.tokenize(list(TOKENIZER_PROBES))
    for name in spec.text_inputs:
        if not np.array_equal(ours[name], theirs[name]):
            raise ExportError(f"the served tokenizer of {spec.name} (from {encoder.source}) "
                              f"gives other {name} than the checkpoint's own: cxr/tokenization.py does not "
                              "reproduce this tokenizer yet; extend it before exporting this checkpoint.")


def _write_config(model_dir: Path, tower: TowerSpec, spec: ModelSpec, target: str, tensorrt: bool,
                  pad_id: int | None) -> None:
    config = triton_config.model_config(tower, spec.batching, target, tensorrt, pad_id)
    (model_dir / "config.pbtxt").write_text(triton_config.to_pbtxt(config))
    if target == "local":
        shutil.copyfile(PYTHON_MODEL, model_dir / VERSION_DIR / "model.py")
    else:
        (model_dir / VERSION_DIR / "model.py").unlink(missing_ok=True)


def _manifest(spec: ModelSpec, encoder: Encoder, staging: Path, target: str, precision: str, seconds: float) -> dict:
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
        "family": spec.family.name,
        "embed_dim": spec.embed_dim,
        "image_size": spec.image_size,
        "context_length": spec.context_length,
        "tokenizer": {"kind": spec.tokenizer, "dir": TOKENIZER_DIR, "clean": spec.family.text_cleaning,
                      "padding": spec.text_padding, "pad_id": onnx_export.text_pad_id(encoder)},
        "towers": {tower.triton_name: asdict(tower) for tower in (image, text)},
        "image_model": image.triton_name,
        "text_model": text.triton_name,
        "onnx": onnx,
        "precision": precision,
        "target": target,
        "source": {"checkpoint": encoder.source, "revision": encoder.revision},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(seconds, 2),
        "versions": {name: version(name) for name in PACKAGES},
    }
