"""The served stack the benchmarks measure, started as `cxr serve` starts it, on free loopback ports.

One model exported into a temporary repository, Triton (dynamic batching on or off), an index of
the given records built through Triton, and the gateway as its own process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cxr import gateway_process, registry
from cxr.archives import Record
from cxr.catalog import ExportedModel
from cxr.manifest import read_export_manifest
from cxr.processes import free_ports, stop_process
from cxr.settings import Settings
from cxr.towers import towers
from cxr.triton import server_process
from indexing.build import BuildOptions, build_index


@dataclass
class Stack:
    settings: Settings
    triton_pid: int
    gateway_pid: int | None
    index_build: dict  # images, seconds, images_per_s


def temporary_settings(base: Settings, model: str, root: Path) -> Settings:
    """Settings for a stack of its own under `root`. The gateway's rate limit and concurrency cap are
    lifted and its text-embedding cache is off: the benchmarks measure capacity, not the limiter, and
    the text tower, not repeats of their few query texts."""
    http, grpc_port, metrics, gateway_port = free_ports(4)
    return replace(base, model=model, model_repository=root / "model_repository", index_dir=root / "indexes",
                   run_dir=root / "run", triton_http_port=http, triton_grpc_port=grpc_port,
                   triton_metrics_port=metrics, gateway_port=gateway_port, metrics_port=0, http_port=0,
                   text_cache_entries=0, triton_admin_key_file=root / "run" / "triton-admin.key", rate_limit_per_s=0,
                   max_concurrent_rpcs=1024)


def set_batching(settings: Settings, spec: registry.ModelSpec, enabled: bool) -> None:
    """Rewrite both towers' config.pbtxt with Triton's dynamic batcher on or off."""
    from export import triton_config

    pad_id = read_export_manifest(settings.model_repository, spec.name)["tokenizer"].get("pad_id")
    for tower in towers(spec):
        config = triton_config.model_config(tower, spec.batching, "local", pad_id=pad_id)
        if not enabled:
            config.ClearField("dynamic_batching")
        (settings.model_repository / tower.triton_name / "config.pbtxt").write_text(triton_config.to_pbtxt(config))


@contextmanager
def exported(base: Settings, model: str) -> Iterator[Settings]:
    """Temporary settings with `model` exported into a temporary repository."""
    from export.repository import export_model

    with tempfile.TemporaryDirectory(prefix=f"bench-{model}-") as tmp:
        settings = temporary_settings(base, model, Path(tmp))
        export_model(registry.get_model(model), settings, log=lambda *_: None)
        yield settings


@contextmanager
def served(settings: Settings, records: list[Record], batching: bool = True, gateway: bool = True,
           rebuild_index: bool = True) -> Iterator[Stack]:
    """Triton (+ index + gateway) on an exported repository; everything stopped on exit."""
    spec = registry.get_model(settings.model)
    set_batching(settings, spec, batching)
    triton, triton_log = server_process.start(settings)
    children = [triton]
    try:
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], triton, 900, triton_log)
        index_build = {}
        if rebuild_index:
            started = time.perf_counter()
            build_index(records, ExportedModel.load(settings.model_repository, settings.model), settings,
                        settings.index_path(settings.model), BuildOptions(progress=False))
            seconds = time.perf_counter() - started
            index_build = {"images": len(records), "seconds": round(seconds, 2),
                           "images_per_s": round(len(records) / seconds, 1)}
        gateway_pid = None
        if gateway:
            process, log = gateway_process.start(settings)
            children.append(process)
            gateway_process.wait_answering(settings, process, log)
            gateway_process.wait_serving(settings)
            gateway_pid = process.pid
        yield Stack(settings, triton.pid, gateway_pid, index_build)
    finally:
        for child in reversed(children):
            stop_process(child)


def process_tree_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process and its descendants (Triton's python-backend stubs are
    children), in MB: now (`VmRSS`) or each process's peak (`VmHWM`), summed."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        # A process that has just exited (a zombie) has no memory lines: it holds none.
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field)), 0)
        pending += [int(c) for c in children]
    return round(total / 1024, 1)


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its descendants have used, including children that have
    exited and been waited for (a decoder pool's workers): compare two readings for a window's cost."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the command's closing parenthesis: field 3 (state) first, so utime..cstime (14-17) are 11..14.
        total += sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:15])
        pending += _children(current)
    return round(total / os.sysconf("SC_CLK_TCK"), 2)


def _children(pid: int) -> list[int]:
    """The children of every thread of a process (a pool may be started from any of them)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return found
