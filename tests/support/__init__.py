"""Helpers shared by the unit and integration tests (importable as `support`: pytest puts tests/ on sys.path);
support.fake_triton holds small fake Tritons, support.targets the red-team suite's gateway under attack."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.processes import free_ports
from cxr.settings import Settings

DATA_DIR = (Path(__file__).parents[2] / ".." / "shared" / "data").resolve()
TWINS = ["pubmed_clip-tiny", "biomedclip-tiny", "siglip-tiny", "medsiglip-tiny"]
# biomedclip-minilm: the real pretrained all-MiniLM-L6-v2 BERT as text tower (BiomedCLIP's class);
# cxr-mini: the trained default, from the weights shipped in weights/cxr-mini.
SERVED = TWINS + ["biomedclip-minilm", "cxr-mini"]
GATEWAY_MODEL = "medsiglip-tiny"  # the model of the session's nih_index and gateway fixtures
SAMPLE_DICOM = DATA_DIR / "cxr_samples" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # SIIM's


def make_settings(root: Path, cache_dir: Path, **overrides) -> Settings:
    """Settings of a stack under `root` on free ports. The text-embedding cache is off: tests of Triton
    faults need every text query to reach Triton (tests/unit/gateway/test_text_cache.py turns it on)."""
    http, grpc, metrics, gateway = free_ports(4)
    values = dict(model_repository=root / "model_repository", cache_dir=cache_dir, run_dir=root / "run",
                  index_dir=root / "indexes", data_dir=DATA_DIR, triton_http_port=http, triton_grpc_port=grpc,
                  triton_metrics_port=metrics, gateway_port=gateway, metrics_port=0, http_port=0,
                  text_cache_entries=0, triton_admin_key_file=root / "run" / "triton-admin.key")
    values.update(overrides)
    return Settings(**values)


def unit_vectors(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """float32 [n, dim], L2-normalised: what the towers return."""
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def index_metadata(n: int) -> list[dict]:
    """Metadata rows with studies of two images, alternating projections and three labels."""
    return [{"image_id": str(i), "study_uid": f"s{i // 2}", "projection": ("Frontal", "Lateral")[i % 2],
             "labels": [("Effusion", "No Finding", "Mass")[i % 3]]} for i in range(n)]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class BackgroundGateway:
    """The real gateway (create_server) on an asyncio loop in a thread, bound to a free loopback port (or
    `address`: a restart on the port it had); with `http`, its HTTP API too, on another (`http_url`: https://
    when the settings have TLS)."""

    def __init__(self, settings: Settings, http: bool = False, address: str = "127.0.0.1:0"):
        import asyncio
        import threading

        from gateway.server import create_server

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def _start():
            gateway, port = create_server(settings, address, http_address="127.0.0.1:0" if http else None)
            await gateway.start(settings.metrics_host, settings.metrics_port)
            return gateway, port

        self.gateway, port = asyncio.run_coroutine_threadsafe(_start(), self.loop).result(60)
        self.address = f"127.0.0.1:{port}"
        scheme = "https" if settings.tls else "http"
        self.http_url = f"{scheme}://127.0.0.1:{self.gateway.http_port}" if http else None

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.gateway.stop(grace=1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class MilvusLiteFile:
    """A MilvusBackend on a Milvus Lite file, whose in-process server is stopped on close (Milvus Lite
    otherwise keeps it until the test session ends)."""

    def __init__(self, path: Path, **options):
        from cxr.store.milvus.backend import MilvusBackend

        self.path = path
        self.backend = MilvusBackend(str(path), **options)

    def __enter__(self):
        return self.backend

    def __exit__(self, *exc) -> None:
        from milvus_lite import server_manager_instance

        self.backend.close()
        server_manager_instance.release_server(str(self.path))


def triton_counts(settings: Settings, triton_name: str) -> tuple[int, int]:
    """Triton's inference and execution counts of a model (executions < inferences: batched)."""
    import tritonclient.grpc as grpcclient

    from cxr.triton.request import admin_headers, connection

    client = grpcclient.InferenceServerClient(**connection(settings))
    stats = client.get_inference_statistics(triton_name, as_json=True,
                                            headers=admin_headers(settings.triton_admin_key_file))["model_stats"][0]
    client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
