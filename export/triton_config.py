"""Generate config.pbtxt from the registry, as Triton's own ModelConfig protobuf.

`local`: the python backend running onnxruntime (the PyPI tritonserver has no other backend).
`gpu`: NVIDIA's container with `platform: "onnxruntime_onnx"`, GPU instances and, optionally,
the TensorRT execution accelerator in FP16 with an engine cache.

Text towers with a dynamic sequence axis (the "longest" families of cxr.families), so
that a query pays for its own tokens rather than the context length:
- `local`: the text inputs are `allow_ragged_batch`, so the dynamic batcher gathers requests of
  different lengths; the python model pads each gathered batch to its longest request with the
  `pad_values` parameter (the tokenizer's pad id; 0 in the attention mask) and runs it once.
- `gpu`: onnxruntime_onnx has no python to pad with, and ragged batching would need a model that
  takes flattened inputs. Instead clients pad to a bucket (16, 32, 64, ..., the context length:
  cxr.towers.sequence_buckets, applied by cxr.catalog), so requests of one bucket have one shape and
  the dynamic batcher gathers them as it gathers fixed-length ones; warm-up runs every bucket so
  neither CUDA nor TensorRT meets a new shape under load.

Warm-up on `gpu` runs each tower at the batch sizes it serves: 1, every preferred batch size and
max_batch_size (for each bucket length), so that the shapes the dynamic batcher forms are met before
the first client's: cuDNN chooses its kernels per shape, and TensorRT's engine is built (or read from
its cache) for the range 1..max_batch_size at load, not rebuilt when the first full batch arrives.
`local` (onnxruntime on CPU) has nothing to build per shape and warms at batch 1 only.
"""

from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxr import tensor_names
from cxr.registry import Batching
from cxr.towers import DYNAMIC, TowerSpec, pad_values, sequence_buckets

TARGETS = ("local", "gpu")
TRITON_TYPES = {"uint8": mc.TYPE_UINT8, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}
# Inside NVIDIA's container, on a writable volume of its own: the model repository is mounted read-only, and
# engines kept across restarts and shared by replicas are what saves minutes per start (docker-compose.yml:
# the triton-trt-cache volume; deploy/k8s: the cxr-trt-cache claim).
TRT_CACHE_DIR = "/trt_cache"
TRT_WORKSPACE_BYTES = str(4 << 30)
# onnxruntime session options of the local python model (export/triton_python_model.py reads them),
# measured on cxr-mini by benchmarks/quantization.py (results/2026-11-29-vm-quantization.md):
# - graph_optimization_level "all": image tower 263 embeddings/s at batch 32 vs 207 "extended", 181 "basic".
# - intra_op_threads "0": the usable cores divided by the tower's instance count, worked out where
#   Triton runs rather than where the export ran (on the busy 2-core VM 1 and 2 threads measured alike).
# - inter_op_threads "1": the graphs run sequentially; more only adds idle threads.
# Not adopted: a saved optimised model (optimized_model_filepath) loads <= 0.15 s faster per tower, a
# fraction of Triton's start, and at level "all" it is tied to the CPU it was made on.
# Which onnxruntime provider the python model uses (read in export/triton_python_model.py, which runs
# inside Triton and imports nothing of ours): "cpu" unless `make bench-gpu` sets "cuda" or "tensorrt".
PROVIDER_PARAMETER = "execution_provider"
ORT_PARAMETERS = {"intra_op_threads": "0", "inter_op_threads": "1", "graph_optimization_level": "all"}


def model_config(tower: TowerSpec, batching: Batching, target: str, tensorrt: bool = False,
                 pad_id: int | None = None) -> mc.ModelConfig:
    """`pad_id`: the tokenizer's, needed by a local text tower with a dynamic sequence axis."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")
    batching = batching.for_tower("text" if tower.output.name == tensor_names.TEXT_EMBEDS else "image")
    config = mc.ModelConfig(name=tower.triton_name, max_batch_size=batching.max_batch_size)
    ragged = target == "local" and tower.dynamic_sequence
    for tensor in tower.inputs:
        config.input.add(name=tensor.name, data_type=TRITON_TYPES[tensor.dtype], dims=tensor.dims,
                         allow_ragged_batch=ragged)
    if ragged:
        _add_padding(config, tower, pad_id)
    out = tower.output
    config.output.add(name=out.name, data_type=TRITON_TYPES[out.dtype], dims=out.dims)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=batching.instance_count, kind=kind)
    _add_warmup(config, tower, served_batch_sizes(batching) if target == "gpu" else (1,))
    if target == "local":
        config.backend = "python"
        for key, value in ORT_PARAMETERS.items():
            config.parameters[key].string_value = value
    else:
        config.platform = "onnxruntime_onnx"
        if tensorrt:
            _add_tensorrt(config)
    return config


def _add_padding(config: mc.ModelConfig, tower: TowerSpec, pad_id: int | None) -> None:
    """What the python model pads a ragged batch with, and the longest request it takes."""
    if pad_id is None:
        raise ValueError(f"{tower.triton_name} takes texts of any length: its local config needs the tokenizer's "
                         "pad id (the export manifest's tokenizer.pad_id)")
    values = pad_values(tuple(t.name for t in tower.inputs), pad_id)
    config.parameters["pad_values"].string_value = json.dumps(values)
    config.parameters["max_sequence_length"].string_value = str(tower.max_sequence)


def served_batch_sizes(batching: Batching) -> tuple[int, ...]:
    """The batch sizes a tower is warmed at: 1, the preferred ones and the largest the batcher forms."""
    return tuple(sorted({1, *batching.preferred_batch_sizes, batching.max_batch_size}))


def _add_warmup(config: mc.ModelConfig, tower: TowerSpec, batch_sizes: tuple[int, ...]) -> None:
    """One warm-up request per batch size; for a dynamic sequence axis, per bucket length too (warm-up needs
    concrete dims)."""
    lengths = sequence_buckets(tower.max_sequence) if tower.dynamic_sequence else (None,)
    for batch_size in batch_sizes:
        for length in lengths:
            suffix = "" if length is None else f"_{length}"
            warmup = config.model_warmup.add(name=f"{tower.triton_name}_warmup_b{batch_size}{suffix}",
                                             batch_size=batch_size)
            for tensor in tower.inputs:
                dims = [length if d == DYNAMIC else d for d in tensor.dims]
                warmup.inputs[tensor.name].CopyFrom(
                    mc.ModelWarmup.Input(data_type=TRITON_TYPES[tensor.dtype], dims=dims, zero_data=True))


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
