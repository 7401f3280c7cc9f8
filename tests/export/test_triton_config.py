"""Every generated config.pbtxt parses into Triton's ModelConfig and carries the registry's values."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cxr import tensor_names
from cxr.registry import get_model, list_models
from cxr.towers import towers
from export.triton_config import TARGETS, model_config, parse_pbtxt, to_pbtxt


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list_models())
def test_config_parses_and_carries_registry_values(name, target):
    spec = get_model(name)
    for tower in towers(spec):
        config = parse_pbtxt(to_pbtxt(model_config(tower, spec.batching, target)))
        assert config.name == tower.triton_name
        assert config.max_batch_size == spec.batching.max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == spec.batching.max_queue_delay_us
        assert [g.count for g in config.instance_group] == [spec.batching.instance_count]
        assert [i.name for i in config.input] == [t.name for t in tower.inputs]
        assert [tuple(i.dims) for i in config.input] == [t.dims for t in tower.inputs]
        assert [o.name for o in config.output] == [tower.output.name]
        assert tuple(config.output[0].dims) == (spec.embed_dim,)
        assert set(config.model_warmup[0].inputs) == {t.name for t in tower.inputs}


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


def test_unknown_target_is_refused():
    spec = get_model("siglip")
    with pytest.raises(ValueError, match="target"):
        model_config(towers(spec)[0], spec.batching, "tpu")
