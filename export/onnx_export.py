"""Trace the two towers to ONNX: uint8 pixels in, L2-normalised embeddings out.

Image normalisation is folded into the graph so clients send uint8 (4x less on the wire than
float32); inputs and outputs carry the names in cxr.tensor_names and a dynamic batch axis.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from cxr import tensor_names
from cxr.errors import ExportError
from cxr.registry import ModelSpec
from export.checkpoints import Encoder

OPSET = 17  # first opset with LayerNormalization as one op, which fp16 conversion keeps in fp32
PROTOBUF_LIMIT = 2**31  # a single ONNX file cannot exceed 2 GB: larger weights go to external data
EXTERNAL_DATA_SUFFIX = ".data"
BATCH = "batch"
# Ops kept in float32 by --fp16: LayerNorm's variance overflows/underflows in half precision.
FP16_KEEP_FLOAT32 = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "ReduceL2"]


class ImageTower(nn.Module):
    """uint8 [n, size, size, 3] RGB -> L2-normalised float32 [n, dim].

    Pixels are normalised with the registry's dataset mean/std, or (`per_image`) each image to
    zero mean and unit variance, which removes exposure differences between sites and devices.
    """

    def __init__(self, features: nn.Module, spec: ModelSpec):
        super().__init__()
        self.features = features
        self.per_image = spec.image_normalization == "per_image"
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(spec.std).view(1, 3, 1, 1)))
        self.register_buffer("offset", (torch.tensor(spec.mean) / torch.tensor(spec.std)).view(1, 3, 1, 1))

    def forward(self, pixels):
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        if self.per_image:
            x = standardize_per_image(x)
        else:
            x = x * self.scale - self.offset
        return F.normalize(self.features(x), dim=-1)


def standardize_per_image(x: torch.Tensor) -> torch.Tensor:
    """Each image of [n, c, h, w] to zero mean, unit variance (flat images stay zero)."""
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-2)


class TextTower(nn.Module):
    """Token ids (and mask, where the family uses one) -> L2-normalised float32 [n, dim]."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, *inputs):
        return F.normalize(self.features(*inputs), dim=-1)


def export_image_tower(encoder: Encoder, spec: ModelSpec, path: Path, fp16: bool = False) -> None:
    size = spec.image_size
    pixels = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    tower = ImageTower(encoder.image_features, spec).eval()
    _export(tower, (pixels,), [tensor_names.PIXELS], tensor_names.IMAGE_EMBEDS, path, fp16)


def export_text_tower(encoder: Encoder, spec: ModelSpec, path: Path, fp16: bool = False) -> None:
    sample = encoder.tokenize(["small left pleural effusion", "no acute cardiopulmonary abnormality"])
    inputs = tuple(torch.from_numpy(sample[name]) for name in spec.text_inputs)
    _export(TextTower(encoder.text_features).eval(), inputs, list(spec.text_inputs),
            tensor_names.TEXT_EMBEDS, path, fp16)


def _export(tower: nn.Module, args: tuple, input_names: list[str], output_name: str, path: Path,
            fp16: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = path.with_suffix(".traced.onnx")
    dynamic_axes = {name: {0: BATCH} for name in [*input_names, output_name]}
    # The TorchScript exporter traces HF and open_clip towers reliably and fast on CPU; the dynamo
    # exporter needs minutes per tower for the same graph.
    with warnings.catch_warnings():
        # Tracing warns about every Python branch on shapes; the parity checks are what prove the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(tower, args, str(traced), input_names=input_names, output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(traced))
    for leftover in traced.parent.glob(traced.name + "*"):
        leftover.unlink()
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT32)
    _save(model, path)


def _save(model: onnx.ModelProto, path: Path) -> None:
    weights = sum(np.prod(t.dims, dtype=np.int64) * (2 if t.data_type == onnx.TensorProto.FLOAT16 else 4)
                  for t in model.graph.initializer)
    external = weights > PROTOBUF_LIMIT * 0.9
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + EXTERNAL_DATA_SUFFIX, size_threshold=1024)


def onnx_files(path: Path) -> list[Path]:
    """The model file and, where weights are external, its data file."""
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    return [path, data] if data.exists() else [path]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in onnx_files(path):
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_exported(path: Path, inputs: dict[str, tuple], output_name: str, embed_dim: int) -> None:
    """Refuse an export whose ONNX signature or output size disagrees with the registry."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = {i.name: tuple(i.shape[1:]) for i in session.get_inputs()}
    wanted = {name: shape for name, shape in inputs.items()}
    if found != wanted:
        raise ExportError(f"{path}: ONNX inputs {found} (past the batch axis) disagree with the registry's {wanted}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [output_name]:
        raise ExportError(f"{path}: ONNX outputs {outputs}, expected [{output_name!r}]")
    feeds = {i.name: np.zeros((3, *inputs[i.name]), dtype=_numpy_dtype(i.type)) for i in session.get_inputs()}
    (embeds,) = session.run([output_name], feeds)
    if embeds.shape != (3, embed_dim):
        raise ExportError(f"{path}: a batch of 3 gave embeddings of shape {embeds.shape}; the registry "
                          f"says {embed_dim}-d. Fix embed_dim in the model's registry JSON or the checkpoint.")


def _numpy_dtype(onnx_type: str):
    return {"tensor(uint8)": np.uint8, "tensor(int64)": np.int64, "tensor(float)": np.float32}[onnx_type]
