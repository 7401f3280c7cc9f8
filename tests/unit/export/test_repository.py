"""`cxr export` writes a complete Triton repository entry, or nothing."""

import dataclasses
import json

import numpy as np
import onnx
import pytest

from cxr import tensor_names
from cxr.catalog import ExportedModel
from cxr.errors import ExportError
from cxr.manifest import MANIFEST_FILE, exported_models, read_export_manifest
from cxr.registry import get_model
from cxr.towers import DYNAMIC, pad_values
from export import onnx_export
from export.repository import export_model, write_configs
from export.triton_config import parse_pbtxt
from support import make_settings

MODEL = "siglip-tiny"


@pytest.fixture
def settings(tmp_path, cache_dir):
    return make_settings(tmp_path, cache_dir)


@pytest.fixture
def exported(settings):
    return export_model(get_model(MODEL), settings, log=lambda *_: None)


def test_export_writes_both_towers_tokenizer_and_manifest(settings, exported):
    repo = settings.model_repository
    spec = get_model(MODEL)
    for triton_name in (spec.image_model, spec.text_model):
        assert (repo / triton_name / "config.pbtxt").is_file()
        assert (repo / triton_name / "1" / "model.onnx").is_file()
        assert (repo / triton_name / "1" / "model.py").is_file()
        assert parse_pbtxt((repo / triton_name / "config.pbtxt").read_text()).name == triton_name
    assert (repo / spec.text_model / "tokenizer" / "tokenizer_config.json").is_file()
    assert exported_models(repo) == [MODEL]
    assert not list(repo.glob(".staging-*"))


def test_manifest_records_dims_names_checksums_and_source(settings, exported):
    spec = get_model(MODEL)
    manifest = read_export_manifest(settings.model_repository, MODEL)
    assert manifest == exported
    assert (manifest["embed_dim"], manifest["image_size"], manifest["context_length"]) == (32, 224, 64)
    assert manifest["towers"][spec.image_model]["inputs"][0]["name"] == tensor_names.PIXELS
    assert manifest["towers"][spec.text_model]["output"]["name"] == tensor_names.TEXT_EMBEDS
    onnx_path = settings.model_repository / spec.image_model / "1" / "model.onnx"
    assert manifest["onnx"][spec.image_model]["sha256"] == onnx_export.sha256(onnx_path)
    assert manifest["source"]["checkpoint"].endswith(MODEL) and manifest["source"]["revision"] == "local"
    assert manifest["versions"]["torch"]


def test_onnx_graphs_use_the_shared_tensor_names_and_a_dynamic_batch(settings, exported):
    spec = get_model(MODEL)
    for triton_name, inputs, output in [(spec.image_model, [tensor_names.PIXELS], tensor_names.IMAGE_EMBEDS),
                                        (spec.text_model, list(spec.text_inputs), tensor_names.TEXT_EMBEDS)]:
        graph = onnx.load(str(settings.model_repository / triton_name / "1" / "model.onnx")).graph
        assert [i.name for i in graph.input] == inputs
        assert [o.name for o in graph.output] == [output]
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == onnx_export.BATCH


def test_a_shape_that_disagrees_with_the_registry_is_refused_and_the_served_model_kept(settings, exported):
    spec = get_model(MODEL)
    before = read_export_manifest(settings.model_repository, MODEL)
    wrong = dataclasses.replace(spec, embed_dim=spec.embed_dim * 2)
    with pytest.raises(ExportError, match="registry"):
        export_model(wrong, settings, log=lambda *_: None)
    assert read_export_manifest(settings.model_repository, MODEL) == before
    assert onnx_export.sha256(settings.model_repository / spec.image_model / "1" / "model.onnx") == \
        before["onnx"][spec.image_model]["sha256"]
    assert not list(settings.model_repository.glob(".staging-*"))


def test_config_only_switches_to_the_gpu_target(settings, exported):
    spec = get_model(MODEL)
    write_configs(spec, settings, "gpu")
    config = parse_pbtxt((settings.model_repository / spec.image_model / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx"
    assert not (settings.model_repository / spec.image_model / "1" / "model.py").exists()


def test_config_only_needs_an_export_first(settings):
    with pytest.raises(ExportError, match="make export MODEL=siglip-tiny"):
        write_configs(get_model(MODEL), settings, "gpu")


def test_large_weights_go_to_an_external_data_file(settings, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)  # every tower counts as "over 2 GB"
    manifest = export_model(get_model(MODEL), settings, log=lambda *_: None)
    spec = get_model(MODEL)
    version_dir = settings.model_repository / spec.image_model / "1"
    assert (version_dir / "model.onnx.data").stat().st_size > (version_dir / "model.onnx").stat().st_size
    assert manifest["onnx"][spec.image_model]["files"] == ["model.onnx", "model.onnx.data"]
    json.loads((settings.model_repository / spec.text_model / MANIFEST_FILE).read_text())


def test_a_fixed_length_family_records_max_length_padding(exported):
    spec = get_model(MODEL)
    assert exported["tokenizer"]["padding"] == "max_length"
    assert exported["towers"][spec.text_model]["inputs"][0]["dims"] == [spec.context_length]
    assert exported["towers"][spec.text_model]["max_sequence"] is None


def test_a_longest_family_pads_texts_to_the_longest_locally_and_to_a_bucket_on_gpu(settings):
    spec = get_model("pubmed_clip-tiny")  # CLIP: input_ids and attention_mask, pad id = end-of-text
    manifest = export_model(spec, settings, log=lambda *_: None)
    assert manifest["tokenizer"]["padding"] == "longest"
    assert manifest["towers"][spec.text_model]["inputs"][0]["dims"] == [DYNAMIC]
    texts = ["effusion", "small left pleural effusion"]
    local = ExportedModel.load(settings.model_repository, spec.name)
    assert local.tokenizer.pad_id == manifest["tokenizer"]["pad_id"]
    tokens = local.tokenizer(texts)
    width = tokens[tensor_names.INPUT_IDS].shape[1]
    assert width == tokens[tensor_names.ATTENTION_MASK].sum(1).max() < 16
    write_configs(spec, settings, "gpu")
    bucketed = ExportedModel.load(settings.model_repository, spec.name).tokenizer(texts)
    for name, pad in pad_values(spec.text_inputs, manifest["tokenizer"]["pad_id"]).items():
        assert bucketed[name].shape == (2, 16)
        np.testing.assert_array_equal(bucketed[name][:, :width], tokens[name])
        assert (bucketed[name][:, width:] == pad).all()


def test_config_only_refuses_an_export_made_with_another_text_signature(settings, exported):
    spec = get_model(MODEL)
    manifest_file = settings.model_repository / spec.text_model / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text())
    manifest["towers"][spec.text_model]["inputs"][0]["dims"] = [DYNAMIC]
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="another signature"):
        write_configs(spec, settings, "gpu")
