"""The python-backend model pads a ragged batch of text requests to its longest one, runs it once,
and answers each request with its own rows; a request it cannot run fails alone."""

import importlib
import sys
import types

import numpy as np
import pytest
from google.protobuf import json_format

from cxr import tensor_names
from cxr.registry import get_model
from cxr.towers import towers
from export.triton_config import model_config

MODEL = "pubmed_clip-tiny"  # input_ids and attention_mask
PAD_ID = 7


class FakeSession:
    """onnxruntime's place: records each call's feeds; row i's "embedding" is its ids, mask and width."""

    calls: list[dict] = []

    def __init__(self, *args, **kwargs):
        FakeSession.calls = []

    def run(self, outputs, feeds):
        FakeSession.calls.append(feeds)
        ids, mask = feeds[tensor_names.INPUT_IDS], feeds[tensor_names.ATTENTION_MASK]
        width = np.full((len(ids), 1), ids.shape[1])
        return [np.concatenate([ids.sum(1, keepdims=True), mask.sum(1, keepdims=True), width], 1).astype(np.float32)]


def _fake_pb_utils() -> types.ModuleType:
    """The parts of Triton's triton_python_backend_utils the model uses."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    module.TritonError = lambda message: types.SimpleNamespace(message=message)
    module.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(
        output_tensors=output_tensors, error=error)
    module.get_input_tensor_by_name = lambda request, name: types.SimpleNamespace(as_numpy=lambda: request[name])
    return module


@pytest.fixture
def module(monkeypatch):
    """export.triton_python_model as Triton loads it, beside a fake onnxruntime session."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    sys.modules.pop("export.triton_python_model", None)
    loaded = importlib.import_module("export.triton_python_model")
    monkeypatch.setattr(loaded.ort, "InferenceSession", FakeSession)
    yield loaded
    sys.modules.pop("export.triton_python_model", None)


@pytest.fixture
def python_model(module):
    spec = get_model(MODEL)
    config = model_config(towers(spec)[1], spec.batching, "local", pad_id=PAD_ID)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                      "model_repository": "/nowhere", "model_version": "1"})
    return model


def _request(rows: list[list[int]]) -> dict:
    ids = np.array(rows, dtype=np.int64)
    return {tensor_names.INPUT_IDS: ids, tensor_names.ATTENTION_MASK: np.ones_like(ids)}


def test_gather_pads_each_array_to_the_longest_with_its_pad_value(module):
    gather = module.gather
    batch = gather([np.array([[1, 2, 3]]), np.array([[4], [5]])], pad_value=PAD_ID)
    np.testing.assert_array_equal(batch, [[1, 2, 3], [4, PAD_ID, PAD_ID], [5, PAD_ID, PAD_ID]])
    same = [np.ones((2, 4)), np.zeros((1, 4))]
    np.testing.assert_array_equal(gather(same, pad_value=PAD_ID), np.concatenate(same))


def test_a_ragged_batch_runs_once_padded_to_its_longest_request(python_model):
    requests = [_request([[1, 2, 3]]), _request([[10, 20, 30, 40, 50], [1, 1, 1, 1, 1]]), _request([[9, 9]])]
    responses = python_model.execute(requests)
    (feeds,) = FakeSession.calls
    assert feeds[tensor_names.INPUT_IDS].shape == (4, 5)
    np.testing.assert_array_equal(feeds[tensor_names.INPUT_IDS][0], [1, 2, 3, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(feeds[tensor_names.ATTENTION_MASK][3], [1, 1, 0, 0, 0])
    assert [r.error for r in responses] == [None] * 3
    rows = [r.output_tensors[0].array for r in responses]
    assert [r.output_tensors[0].name for r in responses] == [tensor_names.TEXT_EMBEDS] * 3
    # Each request's own rows, in order: sum of its ids padded with PAD_ID, its mask length, the batch width.
    np.testing.assert_array_equal(rows[0], [[6 + 2 * PAD_ID, 3, 5]])
    np.testing.assert_array_equal(rows[1], [[150, 5, 5], [5, 5, 5]])
    np.testing.assert_array_equal(rows[2], [[18 + 3 * PAD_ID, 2, 5]])


def test_a_request_longer_than_the_context_fails_alone(python_model):
    context = get_model(MODEL).context_length
    responses = python_model.execute([_request([[1] * (context + 1)]), _request([[2, 3]])])
    assert "outside 1..77" in responses[0].error.message
    assert responses[1].error is None and responses[1].output_tensors[0].array.shape == (1, 3)
    (feeds,) = FakeSession.calls
    assert feeds[tensor_names.INPUT_IDS].shape == (1, 2)


def test_a_request_whose_inputs_differ_in_length_fails_alone(python_model):
    odd = {tensor_names.INPUT_IDS: np.ones((1, 4), np.int64), tensor_names.ATTENTION_MASK: np.ones((1, 3), np.int64)}
    responses = python_model.execute([odd, _request([[2, 3]])])
    assert "differ in length" in responses[0].error.message
    assert responses[1].error is None


def test_an_onnxruntime_failure_is_reported_to_every_request(python_model, monkeypatch):
    def fail(outputs, feeds):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(python_model.session, "run", fail)
    responses = python_model.execute([_request([[1]]), _request([[2, 3]])])
    assert all("onnxruntime failed: out of memory" in r.error.message for r in responses)


def test_the_provider_comes_from_the_config_with_the_cpu_as_fallback(module):
    assert module.providers("cpu") == ["CPUExecutionProvider"]
    assert [p if isinstance(p, str) else p[0] for p in module.providers("cuda")] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert module.providers("tensorrt")[0][1]["trt_fp16_enable"]
    with pytest.raises(ValueError, match="not one of"):
        module.providers("rocm")
