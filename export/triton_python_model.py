"""Triton python-backend model that serves one ONNX tower with onnxruntime.

Copied as `1/model.py` beside `1/model.onnx` by `cxr export --target local`, for Triton builds
that have only the python backend (the tritonserver in PyPI's nvidia-pytriton). Input and
output names come from config.pbtxt, so this one file serves every tower.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]
        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # ORT's worker threads otherwise spin after every run, taking the cores the gateway (and
        # the other tower) need on the same host: measured ~10 ms p50 per gateway text query (cxr-mini).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        """Run every request the dynamic batcher gathered as one onnxruntime call."""
        inputs = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names]
                  for r in requests]
        sizes = [request_inputs[0].shape[0] for request_inputs in inputs]
        feeds = {name: np.concatenate([request_inputs[i] for request_inputs in inputs])
                 for i, name in enumerate(self.input_names)}
        try:
            (embeds,) = self.session.run([self.output_name], feeds)
        except Exception as exc:  # noqa: BLE001 - reported to every waiting client, the model stays up
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
                for part in np.split(embeds, np.cumsum(sizes)[:-1])]
