"""Trace the two towers to ONNX: uint8 pixels in, L2-normalised embeddings out.

Image normalisation is folded into the graph so clients send uint8 (4x less on the wire than
float32); inputs and outputs carry the names in cxr.tensor_names and a dynamic batch axis. Text
towers of "longest" families (cxr.families.Family.text_padding) also take any sequence length, checked at
export to embed a text padded to its own length as they embed it padded to the context length.
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
from cxr.towers import DYNAMIC, pad_sequences, pad_values
from export.checkpoints import Encoder

OPSET = 17  # first opset with LayerNormalization as one op, which fp16 conversion keeps in fp32
PROTOBUF_LIMIT = 2**31  # a single ONNX file cannot exceed 2 GB: larger weights go to external data
EXTERNAL_DATA_SUFFIX = ".data"
BATCH = "batch"
SEQUENCE = "sequence"
PADDING_PARITY = 0.9999  # cosine of a text's embedding at its own length and at the context length
SAMPLE_TEXTS = ["small left pleural effusion", "no acute cardiopulmonary abnormality"]
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
    sample = encoder.tokenize(SAMPLE_TEXTS)
    inputs = tuple(torch.from_numpy(sample[name]) for name in spec.text_inputs)
    sequence_axis = spec.text_padding == "longest"
    _export(TextTower(encoder.text_features).eval(), inputs, list(spec.text_inputs),
            tensor_names.TEXT_EMBEDS, path, fp16, sequence_axis)
    if sequence_axis:
        check_padding_invariant(path, {n: sample[n] for n in spec.text_inputs}, text_pad_id(encoder), spec.name)


def text_pad_id(encoder: Encoder) -> int:
    """The checkpoint tokenizer's pad id: the last position of an empty text padded to the context
    length (every family pads on the right), so it is the id the checkpoint's own model masks."""
    return int(encoder.tokenize([""])[tensor_names.INPUT_IDS][0, -1])


def check_padding_invariant(path: Path, sample: dict[str, np.ndarray], pad_id: int, model: str) -> None:
    """Refuse a dynamic-length text tower whose embedding of a text changes with its padding (the
    server pads each batch to its longest text, so a short text is padded by a varying amount), or
    whose tokenizer pads with another id than `pad_id` (the id the server pads with)."""
    values = pad_values(tuple(sample), pad_id)
    lengths = sequence_lengths(sample, values)
    context = next(iter(sample.values())).shape[1]
    worst = _padding_parity(_session(path), sample, lengths)
    if worst < PADDING_PARITY:
        raise ExportError(f"{path}: {model}'s text tower embeds a text padded to the longest text or to its own "
                          f"length differently from the same text padded to {context} (cosine {worst:.6f}): "
                          "its family must stay fixed-length; set its text_padding to \"max_length\" in "
                          "cxr/families.py.")
    padded_again = pad_sequences({n: a[:, :lengths.max()] for n, a in sample.items()}, context, values)
    if any(not np.array_equal(padded_again[n], sample[n]) for n in sample):
        raise ExportError(f"{path}: padding with pad id {pad_id} does not reproduce the tokenizer's padding of "
                          f"{model}: the server would pad with the wrong id.")


def _padding_parity(session, sample: dict[str, np.ndarray], lengths: np.ndarray) -> float:
    """The worst cosine between the sample at the context length and trimmed to the longest row, or
    to each row's own length."""
    at_context = session.run(None, sample)[0]
    at_longest = session.run(None, {n: a[:, :lengths.max()] for n, a in sample.items()})[0]
    one_by_one = np.concatenate([session.run(None, {n: a[i:i + 1, :length] for n, a in sample.items()})[0]
                                 for i, length in enumerate(lengths)])
    return float(min(_cosine(at_context, at_longest).min(), _cosine(at_context, one_by_one).min()))


def sequence_lengths(arrays: dict[str, np.ndarray], values: dict[str, int]) -> np.ndarray:
    """Per row, one past the last position where any input is not its pad value (right padding)."""
    content = np.any([a != values[name] for name, a in arrays.items()], axis=0)
    return np.array([int(np.flatnonzero(row).max(initial=0)) + 1 for row in content])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _export(tower: nn.Module, args: tuple, input_names: list[str], output_name: str, path: Path,
            fp16: bool, sequence_axis: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = path.with_suffix(".traced.onnx")
    dynamic_axes = {name: {0: BATCH} for name in [*input_names, output_name]}
    if sequence_axis:  # dim 1 of every input: the token axis
        dynamic_axes.update({name: {0: BATCH, 1: SEQUENCE} for name in input_names})
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
    session = _session(path)
    # onnxruntime names a dynamic dim (a string), where the registry writes DYNAMIC.
    found = {i.name: tuple(DYNAMIC if isinstance(d, str) else d for d in i.shape[1:]) for i in session.get_inputs()}
    wanted = {name: shape for name, shape in inputs.items()}
    if found != wanted:
        raise ExportError(f"{path}: ONNX inputs {found} (past the batch axis) disagree with the registry's {wanted}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [output_name]:
        raise ExportError(f"{path}: ONNX outputs {outputs}, expected [{output_name!r}]")
    dynamic = any(DYNAMIC in shape for shape in inputs.values())
    for length in (5, 9) if dynamic else (None,):  # a dynamic axis takes more than the length it was traced at
        dims = {name: tuple(length if d == DYNAMIC else d for d in shape) for name, shape in inputs.items()}
        feeds = {i.name: np.zeros((3, *dims[i.name]), dtype=_numpy_dtype(i.type)) for i in session.get_inputs()}
        (embeds,) = session.run([output_name], feeds)
        if embeds.shape != (3, embed_dim):
            raise ExportError(f"{path}: a batch of 3 gave embeddings of shape {embeds.shape}; the registry "
                              f"says {embed_dim}-d. Fix embed_dim in the model's registry JSON or the checkpoint.")


def _numpy_dtype(onnx_type: str):
    return {"tensor(uint8)": np.uint8, "tensor(int64)": np.int64, "tensor(float)": np.float32}[onnx_type]
