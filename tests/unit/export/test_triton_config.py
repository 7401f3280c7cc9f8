"""Every generated config.pbtxt parses into Triton's ModelConfig and carries the registry's values."""

import json

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cxr import tensor_names
from cxr.registry import Batching, get_model, list_models
from cxr.towers import DYNAMIC, sequence_buckets, towers
from export.triton_config import TARGETS, TRT_CACHE_DIR, model_config, parse_pbtxt, served_batch_sizes, to_pbtxt

PAD_ID = 7
LONGEST = [n for n in list_models() if get_model(n).text_padding == "longest"]
FIXED = [n for n in list_models() if get_model(n).text_padding == "max_length"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list_models())
def test_config_parses_and_carries_registry_values(name, target):
    spec = get_model(name)
    for kind, tower in zip(("image", "text"), towers(spec)):
        config = parse_pbtxt(to_pbtxt(model_config(tower, spec.batching, target, pad_id=PAD_ID)))
        batching = spec.batching.for_tower(kind)  # a tower's own values where `make tune` found them to differ
        assert config.name == tower.triton_name
        assert config.max_batch_size == batching.max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == batching.max_queue_delay_us
        assert list(config.dynamic_batching.preferred_batch_size) == list(batching.preferred_batch_sizes)
        assert [g.count for g in config.instance_group] == [batching.instance_count]
        assert [i.name for i in config.input] == [t.name for t in tower.inputs]
        assert [tuple(i.dims) for i in config.input] == [t.dims for t in tower.inputs]
        assert [o.name for o in config.output] == [tower.output.name]
        assert tuple(config.output[0].dims) == (spec.embed_dim,)
        assert set(config.model_warmup[0].inputs) == {t.name for t in tower.inputs}
        assert all(d > 0 for w in config.model_warmup for i in w.inputs.values() for d in i.dims)


def test_image_config_takes_uint8_pixels_at_the_model_size():
    spec = get_model("medsiglip")
    image, text = towers(spec)
    config = model_config(image, spec.batching, "local")
    assert config.input[0].name == tensor_names.PIXELS
    assert config.input[0].data_type == mc.TYPE_UINT8
    assert tuple(config.input[0].dims) == (448, 448, 3)
    assert [i.name for i in model_config(text, spec.batching, "local").input] == [tensor_names.INPUT_IDS]


def test_local_uses_the_python_backend_on_cpu_and_gpu_uses_onnxruntime_on_gpu():
    spec = get_model("siglip")
    image, _ = towers(spec)
    local = model_config(image, spec.batching, "local")
    gpu = model_config(image, spec.batching, "gpu")
    assert (local.backend, local.platform, local.instance_group[0].kind) == \
        ("python", "", mc.ModelInstanceGroup.KIND_CPU)
    assert (gpu.backend, gpu.platform, gpu.instance_group[0].kind) == \
        ("", "onnxruntime_onnx", mc.ModelInstanceGroup.KIND_GPU)
    assert not gpu.optimization.execution_accelerators.gpu_execution_accelerator


def test_tensorrt_block_is_fp16_with_an_engine_cache():
    spec = get_model("medsiglip")
    image, _ = towers(spec)
    config = parse_pbtxt(to_pbtxt(model_config(image, spec.batching, "gpu", tensorrt=True)))
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "true"


def test_the_tensorrt_engine_cache_is_not_on_the_read_only_model_repository():
    assert not TRT_CACHE_DIR.startswith("/models")  # docker-compose.yml and deploy/k8s mount /models read-only
    spec = get_model("medsiglip")
    (accelerator,) = model_config(towers(spec)[0], spec.batching, "gpu", tensorrt=True).optimization \
        .execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_engine_cache_path"] == TRT_CACHE_DIR


@pytest.mark.parametrize("name", list_models())
def test_on_gpu_every_tower_is_warmed_at_each_batch_size_it_serves_and_every_bucket(name):
    spec = get_model(name)
    for kind, tower in zip(("image", "text"), towers(spec)):
        batching = spec.batching.for_tower(kind)
        config = parse_pbtxt(to_pbtxt(model_config(tower, spec.batching, "gpu")))
        lengths = sequence_buckets(tower.max_sequence) if tower.dynamic_sequence else (None,)
        warmed = sorted((w.batch_size, tuple(w.inputs[tower.inputs[0].name].dims)) for w in config.model_warmup)
        expected = sorted((b, tuple(length if d == DYNAMIC else d for d in tower.inputs[0].dims))
                          for b in served_batch_sizes(batching) for length in lengths)
        assert warmed == expected
        assert max(b for b, _ in warmed) == batching.max_batch_size == config.max_batch_size
        assert len({w.name for w in config.model_warmup}) == len(config.model_warmup)


def test_served_batch_sizes_are_one_the_preferred_and_the_largest():
    assert served_batch_sizes(Batching(max_batch_size=16, max_queue_delay_us=0, instance_count=1)) == (1, 16)
    assert served_batch_sizes(Batching(32, 0, 1, preferred_batch_sizes=(8, 16))) == (1, 8, 16, 32)
    assert served_batch_sizes(Batching(1, 0, 1)) == (1,)


@pytest.mark.parametrize("name", ["cxr-mini", "medsiglip"])
def test_locally_warm_up_stays_at_batch_one(name):
    spec = get_model(name)
    config = model_config(towers(spec)[1], spec.batching, "local", pad_id=PAD_ID)
    assert {w.batch_size for w in config.model_warmup} == {1}


def test_unknown_target_is_refused():
    spec = get_model("siglip")
    with pytest.raises(ValueError, match="target"):
        model_config(towers(spec)[0], spec.batching, "tpu")


def test_every_family_has_a_padding_and_siglip_stays_fixed_length():
    assert {get_model(n).family.name for n in LONGEST} == {"hf_clip", "open_clip"}
    assert {get_model(n).family.name for n in FIXED} == {"hf_siglip"}
    assert "cxr-mini" in LONGEST and "medsiglip" in FIXED


@pytest.mark.parametrize("name", LONGEST)
def test_longest_families_take_ragged_texts_of_any_length_locally(name):
    spec = get_model(name)
    _, text = towers(spec)
    config = parse_pbtxt(to_pbtxt(model_config(text, spec.batching, "local", pad_id=PAD_ID)))
    assert [tuple(i.dims) for i in config.input] == [(DYNAMIC,)] * len(spec.text_inputs)
    assert all(i.allow_ragged_batch for i in config.input)
    pad_values = json.loads(config.parameters["pad_values"].string_value)
    assert pad_values == {name: PAD_ID if name == tensor_names.INPUT_IDS else 0 for name in spec.text_inputs}
    assert int(config.parameters["max_sequence_length"].string_value) == spec.context_length


@pytest.mark.parametrize("name", LONGEST)
def test_on_gpu_longest_families_are_dynamic_but_not_ragged_and_warm_every_bucket(name):
    spec = get_model(name)
    _, text = towers(spec)
    config = parse_pbtxt(to_pbtxt(model_config(text, spec.batching, "gpu")))
    assert [tuple(i.dims) for i in config.input] == [(DYNAMIC,)] * len(spec.text_inputs)
    assert not any(i.allow_ragged_batch for i in config.input)
    assert "pad_values" not in config.parameters
    warmed = {tuple(i.dims) for w in config.model_warmup for i in w.inputs.values()}
    assert warmed == {(b,) for b in sequence_buckets(spec.context_length)}
    assert max(sequence_buckets(spec.context_length)) == spec.context_length


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXED)
def test_siglip_families_keep_the_context_length_and_no_ragged_batch(name, target):
    spec = get_model(name)
    _, text = towers(spec)
    config = model_config(text, spec.batching, target)
    assert [tuple(i.dims) for i in config.input] == [(spec.context_length,)]
    assert not any(i.allow_ragged_batch for i in config.input)
    assert "pad_values" not in config.parameters


def test_a_local_dynamic_text_tower_needs_the_pad_id():
    spec = get_model("cxr-mini")
    with pytest.raises(ValueError, match="pad id"):
        model_config(towers(spec)[1], spec.batching, "local")
