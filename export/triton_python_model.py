"""Triton python-backend model that serves one ONNX tower with onnxruntime.

Copied as `1/model.py` beside `1/model.onnx` by `cxr export --target local`, for Triton builds
that have only the python backend (the tritonserver in PyPI's nvidia-pytriton). Input and
output names come from config.pbtxt, so this one file serves every tower. A text tower with a
dynamic sequence axis gets ragged batches: its `pad_values` parameter says what each input is
padded with to the longest request of the batch.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# config.pbtxt's graph_optimization_level parameter (export/triton_config.py) -> onnxruntime's level.
OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# config.pbtxt's execution_provider parameter: which onnxruntime provider runs the tower. "cuda" and
# "tensorrt" need onnxruntime-gpu (what `make bench-gpu` installs); the local default is the CPU.
PROVIDER_PARAMETER = "execution_provider"
PROVIDERS = ("cpu", "cuda", "tensorrt")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]
        parameters = config.get("parameters", {})
        self.pad_values = json.loads(_parameter(parameters, "pad_values", "{}"))
        self.max_length = int(_parameter(parameters, "max_sequence_length", "0"))
        options = session_options(parameters, instance_count(config))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        provider = _parameter(parameters, PROVIDER_PARAMETER, "cpu")
        self.session = ort.InferenceSession(path, options, providers=providers(provider))

    def execute(self, requests):
        """Run every valid request the dynamic batcher gathered as one onnxruntime call; a request that
        cannot run (a bad sequence length) fails alone, not the batch it came in."""
        inputs = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names]
                  for r in requests]
        problems = [self._problem(request_inputs) for request_inputs in inputs]
        valid = [request_inputs for request_inputs, problem in zip(inputs, problems) if problem is None]
        try:
            outputs = iter(self._run(valid) if valid else [])
        except Exception as exc:  # noqa: BLE001 - reported to every waiting client, the model stays up
            problems = [problem or f"onnxruntime failed: {exc}" for problem in problems]
        return [_error(problem) if problem else
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, next(outputs))])
                for problem in problems]

    def _problem(self, request_inputs):
        """Why a request of a dynamic-length tower cannot run, or None."""
        if not self.max_length:
            return None  # fixed dims: Triton checked the shape
        lengths = {array.shape[1] for array in request_inputs}
        if len(lengths) > 1:
            return f"inputs {self.input_names} of one request differ in length: {sorted(lengths)}"
        (length,) = lengths
        if not 1 <= length <= self.max_length:
            return f"sequence length {length} is outside 1..{self.max_length} (the model's context length)"
        return None

    def _run(self, inputs):
        """The requests' inputs as one batch through onnxruntime; the embeddings split back per request."""
        sizes = [request_inputs[0].shape[0] for request_inputs in inputs]
        feeds = {name: gather([request_inputs[i] for request_inputs in inputs], self.pad_values.get(name))
                 for i, name in enumerate(self.input_names)}
        (embeds,) = self.session.run([self.output_name], feeds)
        return np.split(embeds, np.cumsum(sizes)[:-1])


def gather(arrays, pad_value=None):
    """Arrays of requests as one batch; [n, length] ones of different lengths right-padded with
    `pad_value` to the longest."""
    if pad_value is None or len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays)
    length = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, length - a.shape[1])), constant_values=pad_value)
                           for a in arrays])


def _parameter(parameters, name, default):
    return parameters.get(name, {}).get("string_value", default)


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def instance_count(config):
    return sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1


def usable_cores():
    """Cores this process may run on (a container's cpuset, not the host's count)."""
    return len(os.sched_getaffinity(0))


def session_options(parameters, instances):
    """onnxruntime settings from config.pbtxt's parameters; measured in benchmarks/quantization.py."""
    options = ort.SessionOptions()
    # 0 = "auto": the cores shared out between this tower's instances, so two instances do not
    # each start a thread per core and fight over them.
    threads = int(_parameter(parameters, "intra_op_threads", "0"))
    options.intra_op_num_threads = threads or max(1, usable_cores() // instances)
    # The towers are chains of layers: a second (inter-op) pool would only add idle threads.
    options.inter_op_num_threads = int(_parameter(parameters, "inter_op_threads", "1"))
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[_parameter(parameters, "graph_optimization_level", "all")]
    # ORT's worker threads otherwise spin after every run, taking the cores the gateway (and
    # the other tower) need on the same host: measured ~10 ms p50 per gateway text query (cxr-mini).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers(name):
    """onnxruntime's provider list for `name`, best first, the CPU last as the fallback for
    operators a GPU provider lacks."""
    if name not in PROVIDERS:
        raise ValueError(f"execution_provider {name!r} is not one of {PROVIDERS}")
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries pip installed beside onnxruntime-gpu
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if name == "cuda":
        return [cuda, "CPUExecutionProvider"]
    tensorrt = ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                              "trt_engine_cache_path": "/tmp/cxr-trt-cache"})
    return [tensorrt, cuda, "CPUExecutionProvider"]
