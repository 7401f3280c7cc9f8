"""Helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from cxr.settings import Settings

DATA_DIR = (Path(__file__).parent.parent / ".." / "shared" / "data").resolve()
TWINS = ["pubmed_clip-tiny", "biomedclip-tiny", "siglip-tiny", "medsiglip-tiny"]
# biomedclip-minilm: the real pretrained all-MiniLM-L6-v2 BERT as text tower (BiomedCLIP's class).
SERVED = TWINS + ["biomedclip-minilm"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def make_settings(root: Path, cache_dir: Path, **overrides) -> Settings:
    http, grpc, metrics = free_ports(3)
    values = dict(model_repository=root / "model_repository", cache_dir=cache_dir, run_dir=root / "run",
                  data_dir=DATA_DIR, triton_http_port=http, triton_grpc_port=grpc, triton_metrics_port=metrics)
    values.update(overrides)
    return Settings(**values)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
