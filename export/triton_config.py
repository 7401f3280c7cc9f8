"""Generate config.pbtxt from the registry, as Triton's own ModelConfig protobuf.

`local`: the python backend running onnxruntime (the PyPI tritonserver has no other backend).
`gpu`: NVIDIA's container with `platform: "onnxruntime_onnx"`, GPU instances and, optionally,
the TensorRT execution accelerator in FP16 with an engine cache.
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxr.registry import Batching
from cxr.towers import TowerSpec

TARGETS = ("local", "gpu")
TRITON_TYPES = {"uint8": mc.TYPE_UINT8, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}
TRT_CACHE_DIR = "/models/.trt_cache"  # inside the container, on the mounted model repository
TRT_WORKSPACE_BYTES = str(4 << 30)


def model_config(tower: TowerSpec, batching: Batching, target: str, tensorrt: bool = False) -> mc.ModelConfig:
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")
    config = mc.ModelConfig(name=tower.triton_name, max_batch_size=batching.max_batch_size)
    for tensor in tower.inputs:
        config.input.add(name=tensor.name, data_type=TRITON_TYPES[tensor.dtype], dims=tensor.dims)
    out = tower.output
    config.output.add(name=out.name, data_type=TRITON_TYPES[out.dtype], dims=out.dims)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=batching.instance_count, kind=kind)
    _add_warmup(config, tower)
    if target == "local":
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        if tensorrt:
            _add_tensorrt(config)
    return config


def _add_warmup(config: mc.ModelConfig, tower: TowerSpec) -> None:
    warmup = config.model_warmup.add(name=f"{tower.triton_name}_warmup", batch_size=1)
    for tensor in tower.inputs:
        warmup.inputs[tensor.name].CopyFrom(
            mc.ModelWarmup.Input(data_type=TRITON_TYPES[tensor.dtype], dims=tensor.dims, zero_data=True))


def _add_tensorrt(config: mc.ModelConfig) -> None:
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters.update({
        "precision_mode": "FP16",
        "max_workspace_size_bytes": TRT_WORKSPACE_BYTES,
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": TRT_CACHE_DIR,
    })


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
