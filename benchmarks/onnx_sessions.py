"""onnxruntime sessions built as Triton's served model builds them, and their throughput: what the
quantization benchmark and the batching tuner both measure outside Triton."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.repository import PYTHON_MODEL


def served_model_module() -> types.ModuleType:
    """export/triton_python_model.py outside Triton (its pb_utils import stubbed): the benchmark
    builds sessions with the very session_options() Triton's model uses."""
    name = "triton_python_backend_utils"
    previous = sys.modules.get(name)
    sys.modules[name] = types.ModuleType(name)
    try:
        spec = importlib.util.spec_from_file_location("cxr_served_model", PYTHON_MODEL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
    return module


SERVED = served_model_module()


def session(path: Path, **parameters: str) -> ort.InferenceSession:
    options = SERVED.session_options({k: {"string_value": str(v)} for k, v in parameters.items()}, 1)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embeddings_per_s(sess: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int, seconds: float,
                     min_runs: int = 3) -> float:
    """Back-to-back runs of one batch for `seconds` (at least `min_runs`) after one warm-up run."""
    part = {k: v[:batch] for k, v in inputs.items()}
    assert len(next(iter(part.values()))) == batch, "fewer inputs than the batch size"
    sess.run(None, part)
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < seconds:
        sess.run(None, part)
        runs += 1
    return runs * batch / (time.perf_counter() - started)
