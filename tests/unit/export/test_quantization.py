"""`cxr export --int8`: only the quantised towers are served, they stay close to fp32, the manifest
says so; and the onnxruntime session options the served model builds from config.pbtxt."""

import dataclasses
import importlib.util
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cxr import registry
from cxr_cli.main import build_parser
from cxr.errors import ExportError
from cxr.images import load_pixels
from cxr.manifest import read_export_manifest
from cxr.registry import get_model
from export import onnx_export
from export.quantization import quantize_int8
from export.repository import PYTHON_MODEL, export_model
from support import cosine, make_settings

MODEL = "siglip-tiny"


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_int8_export_serves_only_the_quantised_towers(tmp_path, cache_dir):
    """Asked for by the registry (`"precision": {"local": "int8"}`), not by a flag."""
    settings = make_settings(tmp_path, cache_dir)
    spec = dataclasses.replace(get_model(MODEL), precision={"local": "int8"})
    manifest = export_model(spec, settings, log=lambda *_: None)
    assert manifest["precision"] == read_export_manifest(settings.model_repository, MODEL)["precision"] == "int8"
    for triton_name in (spec.image_model, spec.text_model):
        version_dir = settings.model_repository / triton_name / "1"
        assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx", "model.py"]
        ops = {node.op_type for node in onnx.load(str(version_dir / "model.onnx")).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert sorted(p.name for p in settings.model_repository.iterdir()) == [spec.image_model, spec.text_model]


def test_int8_stays_close_to_fp32_on_real_images_and_reports(xray_paths, report_texts, tmp_path, cache_dir):
    """cxr-mini, the trained model: its text tower is where the int8 weights are."""
    from export.families import load_encoder
    from export.repository import resolve_source

    spec = get_model("cxr-mini")
    encoder = load_encoder(spec, resolve_source(spec, make_settings(tmp_path, cache_dir), None))
    onnx_export.export_image_tower(encoder, spec, tmp_path / "image.onnx")
    onnx_export.export_text_tower(encoder, spec, tmp_path / "text.onnx")
    for tower in ("image", "text"):
        quantize_int8(tmp_path / f"{tower}.onnx", tmp_path / f"{tower}.int8.onnx")
    assert (tmp_path / "text.int8.onnx").stat().st_size < 0.8 * (tmp_path / "text.onnx").stat().st_size
    pixels = {"pixels": load_pixels(xray_paths, spec.image_size)}
    tokens = {name: array for name, array in encoder.tokenize(report_texts).items() if name in spec.text_inputs}
    for tower, feeds in (("image", pixels), ("text", tokens)):
        cos = cosine(_run(tmp_path / f"{tower}.int8.onnx", feeds), _run(tmp_path / f"{tower}.onnx", feeds))
        assert cos.min() >= 0.98, (tower, cos)


def test_a_registry_precision_must_be_known():
    raw = json.loads((registry.CONFIG_DIR / "cxr-mini.json").read_text())
    with pytest.raises(ValueError, match="precision"):
        registry._parse("cxr-mini", dict(raw, precision={"local": "int4"}))


def test_int8_is_refused_for_the_gpu_target(tmp_path, cache_dir):
    with pytest.raises(ExportError, match="--target local"):
        export_model(get_model(MODEL), make_settings(tmp_path, cache_dir), target="gpu", precision="int8",
                     log=lambda *_: None)


def test_precision_flags_are_exclusive_and_default_to_the_registry():
    parser = build_parser()
    assert parser.parse_args(["export", "--int8"]).precision == "int8"
    assert parser.parse_args(["export", "--fp16"]).precision == "fp16"
    assert parser.parse_args(["export"]).precision is None
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--int8", "--fp16"])


@pytest.fixture
def served_model():
    """export/triton_python_model.py with a stand-in for Triton's pb_utils."""
    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
    try:
        spec = importlib.util.spec_from_file_location("served_model_under_test", PYTHON_MODEL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["triton_python_backend_utils"]


def _parameters(**values):
    return {key: {"string_value": str(value)} for key, value in values.items()}


def test_session_threads_share_the_cores_between_instances(served_model, monkeypatch):
    monkeypatch.setattr(served_model, "usable_cores", lambda: 8)
    assert served_model.session_options(_parameters(intra_op_threads=0), 2).intra_op_num_threads == 4
    assert served_model.session_options({}, 16).intra_op_num_threads == 1
    assert served_model.session_options(_parameters(intra_op_threads=3), 2).intra_op_num_threads == 3
    config = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    assert served_model.instance_count(config) == 2 and served_model.instance_count({}) == 1


def test_session_options_come_from_config_parameters(served_model):
    options = served_model.session_options(_parameters(graph_optimization_level="extended"), 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert served_model.session_options({}, 1).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(KeyError):
        served_model.session_options(_parameters(graph_optimization_level="fastest"), 1)


def test_quantised_weights_are_int8(tmp_path):
    """A bare MatMul with a constant weight: the quantiser stores the weight as int8 with scales."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 32])], [weight])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx")
    initializers = onnx.load(str(tmp_path / "q.onnx")).graph.initializer
    assert onnx.TensorProto.INT8 in {i.data_type for i in initializers}
    x = rng.normal(size=(200, 64)).astype(np.float32)
    exact, quantised = _run(tmp_path / "m.onnx", {"x": x}), _run(tmp_path / "q.onnx", {"x": x})
    assert np.linalg.norm(quantised - exact) / np.linalg.norm(exact) < 0.05
