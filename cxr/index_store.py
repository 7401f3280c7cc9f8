"""One model's index on disk: FAISS vectors, per-image metadata and a manifest, replaced atomically.

<dir>/index.faiss      inner product on L2-normalised vectors (cosine); flat, ivf or hnsw
<dir>/metadata.jsonl   one line per vector, in id order (Record.metadata())
<dir>/manifest.json    model, export checksum, dim, count, index type, created, and the size and
                       SHA-256 of index.faiss and metadata.jsonl, verified before they are read
<dir>/skipped.csv      inputs that could not be read, with the reason
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cxr.errors import CxrError
from cxr.files import replace_directory

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.csv"
INDEX_TYPES = ("flat", "ivf", "hnsw")
HNSW_M = 32
HNSW_EF_SEARCH = 128
IVF_NPROBE = 32
# k-means on a sample of 64 points per list: training on all of a million 1152-d vectors
# would take hours on a small CPU for no measurable recall gain.
IVF_TRAIN_POINTS_PER_LIST = 64


class IndexMismatchError(CxrError):
    """The index was built by another model or with another dimension."""


class IndexMissingError(CxrError):
    """No index where one was expected."""


class IndexCorruptError(CxrError):
    """An index file is damaged, truncated or does not match its manifest's checksum."""


CHECKSUMMED = (INDEX_FILE, METADATA_FILE)
CHUNK_BYTES = 1 << 20


def file_checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def make_index(vectors: np.ndarray, index_type: str, use_gpu: bool = False) -> faiss.Index:
    """A CPU index over `vectors` (float32 [n, dim], L2-normalised) with ids 0..n-1. With
    `use_gpu` and faiss-gpu, flat and IVF indexes are trained and filled on the GPU, then stored
    for the CPU (HNSW has no GPU build in FAISS)."""
    index = _empty_index(vectors, index_type)
    if use_gpu and index_type != "hnsw" and gpu_available():
        resources = faiss.StandardGpuResources()
        on_gpu = faiss.index_cpu_to_gpu(resources, 0, index)
        on_gpu.train(vectors)
        on_gpu.add(vectors)
        return faiss.index_gpu_to_cpu(on_gpu)
    index.train(vectors)
    index.add(vectors)
    return index


def _empty_index(vectors: np.ndarray, index_type: str) -> faiss.Index:
    n, dim = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif index_type == "ivf":
        nlist = max(1, min(int(math.sqrt(n)), n // 39 or 1))  # FAISS wants >= 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        index.nprobe = min(IVF_NPROBE, nlist)
    else:
        raise ValueError(f"index type {index_type!r} is not one of {INDEX_TYPES}")
    return index


def write(directory: Path, vectors: np.ndarray, metadata: list[dict], manifest: dict,
          skipped: list[tuple[str, str]], index_type: str, use_gpu: bool = False) -> dict:
    """Write a complete index into a staging folder, then swap it in place of `directory`."""
    assert vectors.shape[0] == len(metadata), (vectors.shape, len(metadata))
    directory.parent.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest, dim=int(vectors.shape[1]) if len(vectors) else manifest.get("dim"),
                    count=len(metadata), index_type=index_type, skipped=len(skipped),
                    created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-staging-", dir=directory.parent))
    try:
        faiss.write_index(make_index(vectors, index_type, use_gpu), str(staging / INDEX_FILE))
        with (staging / METADATA_FILE).open("w", encoding="utf-8") as f:
            for item in metadata:
                f.write(json.dumps(item) + "\n")
        write_skipped(staging / SKIPPED_FILE, skipped)
        manifest["files"] = {name: file_checksum(staging / name) for name in CHECKSUMMED}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        replace_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is not readable JSON ({exc}); rebuild the index") from exc


@dataclass
class LoadedIndex:
    index: faiss.Index
    metadata: list[dict]
    manifest: dict
    directory: Path
    size_bytes: int


def _check_files(directory: Path, manifest: dict) -> None:
    files = manifest.get("files")
    if not files:
        raise IndexCorruptError(f"index {directory} has no checksums in its manifest (built by an older version): "
                                "rebuild it with `cxr index build`")
    for name in CHECKSUMMED:
        expected = files.get(name, {})
        try:
            actual = file_checksum(directory / name)
        except OSError as exc:
            raise IndexCorruptError(f"{directory / name} cannot be read ({exc.strerror or exc}); rebuild the index") \
                from exc
        if actual != expected:
            raise IndexCorruptError(f"{directory / name} is {actual['bytes']} bytes with sha256 "
                                    f"{actual['sha256'][:12]}…; the manifest says {expected.get('bytes')} bytes, "
                                    f"{str(expected.get('sha256'))[:12]}…: damaged or swapped, rebuild the index")


def _check_model(directory: Path, manifest: dict, model: str | None, dim: int | None,
                 export_sha256: str | None) -> None:
    if (model and manifest.get("model") != model) or (dim and manifest.get("dim") != dim):
        raise IndexMismatchError(
            f"index {directory} was built with {manifest.get('model')} ({manifest.get('dim')}-d); the gateway serves "
            f"{model} ({dim}-d): rebuild it with `cxr index build --model {model} --output-dir {directory} ...`")
    built_with = manifest.get("export_sha256")
    if export_sha256 and built_with != export_sha256:
        raise IndexMismatchError(
            f"index {directory} was built with another export of {model} (image tower sha256 {str(built_with)[:12]}…); "
            f"the export served now is sha256 {export_sha256[:12]}…: rebuild it with "
            f"`cxr index build --model {model} --output-dir {directory} ...`")


def load(directory: Path, model: str | None = None, dim: int | None = None,
         export_sha256: str | None = None) -> LoadedIndex:
    """Load an index, refusing one built by another model, dimension or export, or whose files do not
    match the checksums in its manifest."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise IndexMissingError(f"no index in {directory}: build one with "
                                f"`cxr index build --model {model or '<model>'} --output-dir {directory} ...`")
    _check_model(directory, manifest, model, dim, export_sha256)
    _check_files(directory, manifest)
    try:
        index = faiss.read_index(str(directory / INDEX_FILE))
        with (directory / METADATA_FILE).open(encoding="utf-8") as f:
            metadata = [json.loads(line) for line in f]
    except (RuntimeError, OSError, ValueError) as exc:
        raise IndexCorruptError(f"index {directory} cannot be read ({exc}); rebuild it") from exc
    if index.ntotal != len(metadata):
        raise IndexCorruptError(f"{directory}: {index.ntotal} vectors but {len(metadata)} metadata lines; rebuild it")
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return LoadedIndex(index, metadata, manifest, directory, size)
