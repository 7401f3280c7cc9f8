"""`make bench-gpu` where there is no GPU: a clear refusal, and every step run on the CPU with --cpu."""

import json

import pytest

from benchmarks import gpu
from support import make_settings

pytestmark = pytest.mark.skipif(gpu.gpu() is not None, reason="a GPU is here: `make bench-gpu` measures it")


@pytest.mark.triton
def test_every_step_runs_on_the_cpu_with_the_tiny_twin(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(gpu, "result_path", lambda name: tmp_path / f"{name}.json")
    plan = gpu.CPU_PLAN
    path = gpu.run(plan, budget=5, base=make_settings(tmp_path, cache_dir))
    results = json.loads(path.read_text())
    family = results["families"]["medsiglip-tiny"]
    failed = {name: step for name, step in {**family, "faiss": results["faiss"]}.items()
              if isinstance(step, dict) and "error" in step}
    assert not failed, failed
    assert family["onnxruntime"]["image"]["providers"] == ["CPUExecutionProvider"]
    assert family["onnxruntime"]["text"]["batch8_per_s"] > 0
    for batching in ("on", "off"):
        load = family[f"triton_batching_{batching}"]["image"]["concurrency4"]
        assert load["errors"] == 0 and load["requests"] > 0
    assert family["index_64_images"]["images"] == 64
    assert results["faiss"]["cpu_batch64_queries_per_s"] > 0 and "gpu_batch1_queries_per_s" not in results["faiss"]
