"""ONNX towers: onnxruntime equals PyTorch; --fp16 keeps LayerNorm in float32 and stays close."""

from dataclasses import replace

import onnx
import onnxruntime as ort
import pytest
import torch

from cxr.errors import ExportError
from cxr.images import load_pixels
from cxr.registry import get_model
from cxr.towers import pad_values
from export import onnx_export
from support import SERVED, TWINS, cosine


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


@pytest.mark.parametrize("name", SERVED)
def test_pytorch_embeds_a_text_at_its_own_length_as_at_the_context_length_only_in_longest_families(name, encoders):
    """The experiment behind cxr.families' text_padding, kept as a test: a short text padded to its own
    length embeds as when padded to the context length in "longest" families, and not in SigLIP's."""
    spec, encoder = get_model(name), encoders[name]
    tokens = encoder.tokenize(["effusion"])
    values = pad_values(spec.text_inputs, onnx_export.text_pad_id(encoder))
    length = int(onnx_export.sequence_lengths(tokens, values)[0])
    embed = lambda t: encoder.text_features(*[torch.from_numpy(t[n]) for n in spec.text_inputs]).numpy()  # noqa: E731
    parity = cosine(embed(tokens), embed({n: a[:, :length] for n, a in tokens.items()}))[0]
    if spec.text_padding == "longest":
        assert parity >= onnx_export.PADDING_PARITY
    else:
        assert parity < 0.99


@pytest.mark.parametrize("name", [n for n in SERVED if get_model(n).text_padding == "longest"])
def test_longest_families_export_a_sequence_axis_that_matches_pytorch_at_any_length(name, encoders, report_texts,
                                                                                    tmp_path):
    spec, encoder = get_model(name), encoders[name]
    onnx_export.export_text_tower(encoder, spec, tmp_path / "text.onnx")
    graph = onnx.load(str(tmp_path / "text.onnx")).graph
    assert all(i.type.tensor_type.shape.dim[1].dim_param == onnx_export.SEQUENCE for i in graph.input)
    tokens = encoder.tokenize(["effusion", report_texts[-1], report_texts[0]])  # short, over-long, medium
    values = pad_values(spec.text_inputs, onnx_export.text_pad_id(encoder))
    lengths = onnx_export.sequence_lengths(tokens, values)
    assert lengths[0] < lengths[2] < lengths[1] == spec.context_length
    reference = onnx_export.TextTower(encoder.text_features)(*[torch.from_numpy(tokens[n]) for n in spec.text_inputs])
    reference = reference.numpy()
    for width in (lengths[2], spec.context_length):  # the medium text pads the short one; the long one, both
        rows = lengths <= width
        text = _run(tmp_path / "text.onnx", {n: a[rows, :width] for n, a in tokens.items()})
        assert cosine(text, reference[rows]).min() >= 0.9999


def test_a_family_whose_embedding_changes_with_padding_is_refused_a_sequence_axis(encoders, tmp_path):
    """SigLIP pools the last position: exported with a dynamic length, the export check catches it."""
    spec, encoder = get_model("siglip-tiny"), encoders["siglip-tiny"]
    spec = replace(spec, family=replace(spec.family, text_padding="longest"))
    with pytest.raises(ExportError, match="text_padding"):
        onnx_export.export_text_tower(encoder, spec, tmp_path / "text.onnx")
