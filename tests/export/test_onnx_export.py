"""ONNX towers: onnxruntime equals PyTorch; --fp16 keeps LayerNorm in float32 and stays close."""

import onnx
import onnxruntime as ort
import pytest
import torch

from cxr.images import load_pixels
from cxr.registry import get_model
from export import onnx_export
from support import TWINS, cosine


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("name", TWINS)
def test_onnxruntime_matches_pytorch_at_batch_sizes_1_and_7(name, encoders, xray_paths, report_texts, tmp_path):
    spec, encoder = get_model(name), encoders[name]
    onnx_export.export_image_tower(encoder, spec, tmp_path / "image.onnx")
    onnx_export.export_text_tower(encoder, spec, tmp_path / "text.onnx")
    pixels = load_pixels(xray_paths[:7], spec.image_size)
    tokens = encoder.tokenize(report_texts[:7])
    reference_image = onnx_export.ImageTower(encoder.image_features, spec)(torch.from_numpy(pixels))
    reference_text = onnx_export.TextTower(encoder.text_features)(*[torch.from_numpy(tokens[n]) for n in spec.text_inputs])
    for batch in (1, 7):
        image = _run(tmp_path / "image.onnx", {"pixels": pixels[:batch]})
        text = _run(tmp_path / "text.onnx", {n: tokens[n][:batch] for n in spec.text_inputs})
        assert cosine(image, reference_image[:batch].numpy()).min() >= 0.9999
        assert cosine(text, reference_text[:batch].numpy()).min() >= 0.9999


def test_fp16_keeps_layernorm_in_float32_and_stays_close(encoders, xray_paths, tmp_path):
    spec = get_model("siglip-tiny")
    encoder = encoders["siglip-tiny"]
    onnx_export.export_image_tower(encoder, spec, tmp_path / "fp32.onnx")
    onnx_export.export_image_tower(encoder, spec, tmp_path / "fp16.onnx", fp16=True)
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    initializers = {i.name: i.data_type for i in model.graph.initializer}
    layer_norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert layer_norms
    for node in layer_norms:  # scale and bias of every LayerNorm stay float32
        assert all(initializers.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in node.input[1:])
    assert onnx.TensorProto.FLOAT16 in initializers.values()
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    pixels = load_pixels(xray_paths, spec.image_size)
    assert cosine(_run(tmp_path / "fp16.onnx", {"pixels": pixels}),
                  _run(tmp_path / "fp32.onnx", {"pixels": pixels})).min() >= 0.999
