"""GPU figures for the four families, on a machine with an NVIDIA GPU: `make bench-gpu` (never in CI).

  python -m benchmarks.gpu [--models pubmed_clip medsiglip] [--budget 60]
  python -m benchmarks.gpu --cpu          # the same steps on the CPU with the tiny twins: tests the script

On a GPU host it
1. installs what it needs into .cache/bench-gpu/site (onnxruntime-gpu with its CUDA and cuDNN
   wheels, a faiss GPU build): that folder goes first on PYTHONPATH for this process and for
   Triton's python backend; the project's .venv is left as it is;
2. exports each family at true size with random weights (weights do not change speed);
3. times ONNX Runtime directly (CUDA provider; TensorRT in fp16 where its libraries load):
   image and text embeddings/s at batch 1/8/32/64;
4. serves both towers with the local Triton (python backend, ONNX Runtime's CUDA provider) and
   measures p50/p95 and q/s at concurrency 1/16/64 with dynamic batching on and off, and the GPU
   memory in use;
5. searches 1M MedSigLIP-size vectors with FAISS on the GPU and on the CPU (q/s at batch 1 and 64);
6. indexes 7,500 images at MedSigLIP's 448 px through Triton (target: under 30 s).

Figures go to benchmarks/results/<date>-<host>-gpu-<gpu name>.json. Without a GPU it stops at
once and says so (exit status 2); each step that fails records its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.load import run_load
from benchmarks.machine import describe, result_path
from cxr import registry
from cxr.settings import Settings, load_settings

PACKAGES = ("onnxruntime-gpu[cuda,cudnn]==1.31.1", "faiss-gpu-cu12==1.14.1")
SITE = Path(".cache/bench-gpu/site")
FAMILIES = ("pubmed_clip", "biomedclip", "siglip", "medsiglip")
QUERY = "small left pleural effusion with adjacent atelectasis"


@dataclass(frozen=True)
class Plan:
    """How big each step is: the GPU plan, or the CPU plan that checks the script where no GPU is."""

    provider: str  # the python backend's ONNX Runtime provider: "cuda" or "cpu"
    models: tuple[str, ...]
    batches: tuple[int, ...]
    concurrency: tuple[int, ...]
    requests: int  # per load measurement (bounded by --budget seconds too)
    faiss_vectors: int
    faiss_dim: int
    index_images: int
    index_size: int  # image side of the indexing run (MedSigLIP's)


GPU_PLAN = Plan("cuda", FAMILIES, (1, 8, 32, 64), (1, 16, 64), 512, 1_000_000, 1152, 7_500, 448)
CPU_PLAN = Plan("cpu", ("medsiglip-tiny",), (1, 8), (1, 4), 24, 20_000, 64, 64, 448)


class NoGpuError(RuntimeError):
    """No NVIDIA GPU answers here."""


def gpu() -> dict | None:
    """Name, memory and driver of GPU 0 from nvidia-smi; None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    name, memory, driver = (part.strip() for part in done.stdout.splitlines()[0].split(","))
    return {"name": name, "memory": memory, "driver": driver}


def gpu_memory_used_mb() -> float | None:
    done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=False) if shutil.which("nvidia-smi") else None
    return float(done.stdout.split()[0]) if done and done.returncode == 0 and done.stdout.strip() else None


def install(site: Path) -> None:
    """onnxruntime-gpu and faiss-gpu into `site`, once; numpy stays the project's (constraints.txt)."""
    marker = site / ".installed"
    if marker.is_file() and marker.read_text() == "\n".join(PACKAGES):
        return
    print(f"installing {', '.join(PACKAGES)} into {site} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), "-c", "constraints.txt",
                    *PACKAGES], check=True)
    marker.write_text("\n".join(PACKAGES))


def use_site(site: Path) -> None:
    """`site` first on the import path, here and in Triton's python backend (it inherits PYTHONPATH)."""
    sys.path.insert(0, str(site.resolve()))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])


def step(results: dict, name: str, run: Callable[[], object]) -> None:
    """Run one measurement into results[name]; a failure is recorded and the next step goes on."""
    print(f"[{name}]", flush=True)
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others' figures
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(f"[{name}] {time.perf_counter() - started:.0f} s: {json.dumps(results[name])[:400]}", flush=True)


def export(spec: registry.ModelSpec, settings: Settings) -> None:
    """A true-size random-weight export (benchmarks.triton_towers), or the twin as it is."""
    from benchmarks.triton_towers import export_in_child
    from export.repository import export_model

    if spec.is_twin:
        export_model(spec, settings, log=lambda *_: None)
    else:
        export_in_child(spec.name, settings)


def ort_providers(provider: str, tensorrt: bool = False) -> list:
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if not tensorrt:
        return [cuda]
    return [("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                           "trt_engine_cache_path": str(SITE.parent / "trt-cache")}), cuda]


def ort_direct(settings: Settings, spec: registry.ModelSpec, plan: Plan, tensorrt: bool, budget: float) -> dict:
    """Embeddings/s of each tower run by ONNX Runtime in this process, per batch size."""
    import onnxruntime as ort

    from cxr.catalog import ExportedModel

    if plan.provider == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries pip put beside onnxruntime-gpu
    model = ExportedModel.load(settings.model_repository, spec.name)
    figures = {}
    for tower, feeds in (("image", _image_feeds(model)), ("text", _text_feeds(model))):
        path = settings.model_repository / tower_name(model, tower) / "1" / "model.onnx"
        session = ort.InferenceSession(str(path), providers=ort_providers(plan.provider, tensorrt))
        figures[tower] = {"providers": session.get_providers()}
        for batch in plan.batches:
            figures[tower][f"batch{batch}_per_s"] = _per_second(session, feeds(batch), batch, budget / 8)
    return figures


def tower_name(model, tower: str) -> str:
    return (model.image if tower == "image" else model.text).triton_name


def _image_feeds(model) -> Callable[[int], dict]:
    size = model.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    return lambda batch: {model.image.inputs[0].name: np.resize(pixels, (batch, size, size, 3))}


def _text_feeds(model) -> Callable[[int], dict]:
    tokens = model.tokenizer([QUERY])
    return lambda batch: {name: np.repeat(array, batch, axis=0) for name, array in tokens.items()}


def _per_second(session, feeds: dict, batch: int, seconds: float) -> float:
    session.run(None, feeds)  # warm-up: allocations, cuDNN algorithm search, TensorRT engine build
    runs, started = 0, time.perf_counter()
    while runs < 3 or (time.perf_counter() - started < seconds and runs < 200):
        session.run(None, feeds)
        runs += 1
    return round(runs * batch / (time.perf_counter() - started), 1)


def set_provider(settings: Settings, spec: registry.ModelSpec, provider: str) -> None:
    """Point both towers' python-backend models at an ONNX Runtime provider (config.pbtxt parameter)."""
    from export import triton_config

    for tower in (spec.image_model, spec.text_model):
        path = settings.model_repository / tower / "config.pbtxt"
        config = triton_config.parse_pbtxt(path.read_text())
        config.parameters[triton_config.PROVIDER_PARAMETER].string_value = provider
        path.write_text(triton_config.to_pbtxt(config))


def served_load(settings: Settings, spec: registry.ModelSpec, plan: Plan, batching: bool, budget: float) -> dict:
    """Both towers in the local Triton on `plan.provider`: latency and q/s per concurrency, GPU memory."""
    from benchmarks.stack import set_batching
    from cxr.catalog import ExportedModel
    from cxr.processes import stop_process
    from cxr.triton import server_process
    from cxr.triton.request import connections
    from cxr.triton.sync_client import TowerClient

    set_batching(settings, spec, batching)
    set_provider(settings, spec, plan.provider)
    process, log_file = server_process.start(settings)
    try:
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], process, 900, log_file)
        model = ExportedModel.load(settings.model_repository, spec.name)
        pixels, tokens = _image_feeds(model)(1), _text_feeds(model)(1)

        def sender(tower: str):
            client = TowerClient(connections(settings), model.image, model.text, model.max_batch_size)
            if tower == "image":
                return lambda: client.embed_images(pixels[model.image.inputs[0].name])
            return lambda: client.embed_texts(tokens)

        figures = {tower: {f"concurrency{c}": run_load(lambda t=tower: sender(t), c, plan.requests, budget)
                           for c in plan.concurrency} for tower in ("image", "text")}
        figures["gpu_memory_used_mb"] = gpu_memory_used_mb()
        return figures
    finally:
        stop_process(process)


def faiss_search(plan: Plan, budget: float) -> dict:
    """Exact search of `plan.faiss_vectors` vectors, q/s at batch 1 and 64, on the GPU and the CPU."""
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((plan.faiss_vectors, plan.faiss_dim), dtype=np.float32)
    faiss.normalize_L2(vectors)
    cpu = faiss.IndexFlatIP(plan.faiss_dim)
    cpu.add(vectors)
    indexes = {"cpu": cpu}
    if plan.provider == "cuda" and faiss.get_num_gpus() > 0:
        indexes["gpu"] = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    figures = {"vectors": plan.faiss_vectors, "dim": plan.faiss_dim, "gpus_seen_by_faiss": faiss.get_num_gpus()}
    for where, index in indexes.items():
        for batch in (1, 64):
            queries = vectors[:batch] + 0.01
            index.search(queries, 10)
            runs, started = 0, time.perf_counter()
            while runs < 3 or (time.perf_counter() - started < budget / 8 and runs < 500):
                index.search(queries, 10)
                runs += 1
            figures[f"{where}_batch{batch}_queries_per_s"] = round(runs * batch / (time.perf_counter() - started), 1)
    return figures


def index_run(settings: Settings, spec: registry.ModelSpec, plan: Plan) -> dict:
    """`plan.index_images` images (the NIH sample, repeated) indexed through Triton on `plan.provider`."""
    from cxr import archives
    from cxr.catalog import ExportedModel
    from cxr.processes import stop_process
    from cxr.triton import server_process
    from indexing.build import BuildOptions, build_index

    nih = archives.nih_labels(settings.data_dir / "nih800" / "labels.csv", settings.data_dir / "nih800")
    records = [replace(nih[i % len(nih)], image_id=f"{i:05d}-{nih[i % len(nih)].image_id}")
               for i in range(plan.index_images)]
    set_provider(settings, spec, plan.provider)
    process, log_file = server_process.start(settings)
    try:
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], process, 900, log_file)
        started = time.perf_counter()
        build_index(records, ExportedModel.load(settings.model_repository, spec.name), settings,
                    settings.index_path(spec.name), BuildOptions(progress=False, batch_size=64,
                                                                 workers=max(1, (os.cpu_count() or 2) - 1)))
        seconds = time.perf_counter() - started
    finally:
        stop_process(process)
    return {"images": len(records), "image_size": spec.image_size, "seconds": round(seconds, 1),
            "images_per_s": round(len(records) / seconds, 1), "target_s": 30}


def measure_family(name: str, plan: Plan, base: Settings, budget: float) -> dict:
    spec = registry.get_model(name)
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{name}-") as tmp:
        root = Path(tmp)
        settings = replace(base, model=name, model_repository=root / "model_repository", run_dir=root / "run",
                           index_dir=root / "indexes")
        entry: dict = {}
        step(entry, "export", lambda: export(spec, settings))
        step(entry, "onnxruntime", lambda: ort_direct(settings, spec, plan, False, budget))
        if plan.provider == "cuda":
            step(entry, "onnxruntime_tensorrt_fp16", lambda: ort_direct(settings, spec, plan, True, budget))
        for batching in (True, False):
            step(entry, f"triton_batching_{'on' if batching else 'off'}",
                 lambda batching=batching: served_load(settings, spec, plan, batching, budget))
        if spec.image_size == plan.index_size:
            step(entry, f"index_{plan.index_images}_images", lambda: index_run(settings, spec, plan))
        return entry


def run(plan: Plan, budget: float, base: Settings | None = None) -> Path:
    """Every step of `plan`; `base`: the settings to start from (ports, data), default cxr.toml's."""
    found = gpu()
    if plan.provider == "cuda":
        if found is None:
            raise NoGpuError("no NVIDIA GPU here (nvidia-smi is missing or sees no device): `make bench-gpu` "
                             "measures GPU serving, so run it on a GPU host; `python -m benchmarks.gpu --cpu` "
                             "runs the same steps on the CPU with the tiny twins, to check the script")
        install(SITE)
        use_site(SITE)
    base = base or load_settings()
    results = {"machine": dict(describe(), gpu=found), "plan": plan.__dict__, "families": {}}
    label = (found["name"] if found and plan.provider == "cuda" else "cpu-check").lower().replace(" ", "-")
    path = result_path(f"gpu-{label}")
    for name in plan.models:
        print(f"== {name} ==", flush=True)
        results["families"][name] = measure_family(name, plan, base, budget)
        path.write_text(json.dumps(results, indent=2))  # what is measured stays if a later family fails
    step(results, "faiss", lambda: faiss_search(plan, budget))
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=[*FAMILIES, *registry.list_models()],
                        help=f"default: {' '.join(FAMILIES)} (with --cpu: {' '.join(CPU_PLAN.models)})")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds at most per measurement")
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU with tiny sizes (a check)")
    args = parser.parse_args(argv)
    plan = CPU_PLAN if args.cpu else GPU_PLAN
    if args.models:
        plan = replace(plan, models=tuple(args.models))
    try:
        run(plan, args.budget)
    except NoGpuError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
