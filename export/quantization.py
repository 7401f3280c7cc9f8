"""int8 dynamic quantisation of an exported tower, for CPU serving (`cxr export --int8`).

MatMul and Gemm weights are stored as int8; activations are quantised per call at run time
(onnxruntime's DynamicQuantizeLinear + MatMulInteger), so no calibration data is needed.
Convolutions and the token-embedding table stay float32, so a ResNet image tower changes only in
its projection head; cxr-mini's MiniLM text tower goes from 91 to 59 MB (47 MB of it the fp32
embedding table) and runs 1.4-1.8x faster on the 2-core VM. benchmarks/quantization.py measures
parity, quality and speed against fp32 and fp16, and the variants of Int8Scheme."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import ExportError
from cxr.registry import PRECISIONS
from export.onnx_export import onnx_files


@dataclass(frozen=True)
class Int8Scheme:
    """How onnxruntime's dynamic quantiser stores the weights."""
    per_channel: bool = True  # one scale per output column rather than per matrix
    reduce_range: bool = False  # 7-bit weights: avoids int16 overflow in AVX2's u8 x s8 kernel
    unsigned_weights: bool = False  # uint8 weights (the u8 x u8 kernel) instead of int8
    ops: tuple[str, ...] = ("MatMul", "Gemm")  # "Gather" would also store the token-embedding table in int8


# Per channel, signed weights, MatMul/Gemm only. On cxr-mini over 512 IU-Xray reports the text
# embeddings keep cosine >= 0.989 (mean 0.996) to fp32, where one scale per matrix falls to 0.94
# (mean 0.979); reduce_range and uint8 weights gain < 0.004 and were no faster; adding "Gather"
# shrinks the text tower to 23 MB at the same cosine (benchmarks/results/2026-11-29-vm-quantization.md).
INT8 = Int8Scheme()


def quantize_int8(source: Path, target: Path, scheme: Int8Scheme = INT8) -> None:
    """Write `source` (an fp32 ONNX model) to `target` with int8 weights as `scheme` says."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    quantizer_log = logging.getLogger()
    level = quantizer_log.level
    # The quantizer warns that graph "pre-processing" is advised: that is for static quantisation
    # of conv nets; onnxruntime fuses the graph itself when the session loads.
    quantizer_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(source, target, op_types_to_quantize=list(scheme.ops), per_channel=scheme.per_channel,
                         reduce_range=scheme.reduce_range,
                         weight_type=QuantType.QUInt8 if scheme.unsigned_weights else QuantType.QInt8,
                         use_external_data_format=len(onnx_files(source)) > 1)
    except Exception as exc:  # noqa: BLE001 - the quantizer raises bare Exceptions for graphs it cannot handle
        raise ExportError(f"int8 quantisation of {source.name} failed: {exc}; export with --fp32 or --fp16") from exc
    finally:
        quantizer_log.setLevel(level)


def check_precision(precision: str, target: str) -> None:
    """int8 dynamic quantisation is a CPU technique: the GPU build runs MatMulInteger slowly or not at all."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "int8" and target != "local":
        raise ExportError("--int8 (dynamic quantisation) is for CPU serving, --target local; "
                          "for --target gpu use --fp16 (with --tensorrt for the TensorRT FP16 engine)")
