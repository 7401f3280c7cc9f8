"""`cxr index build`: encode an archive's images through Triton into one model's index (FAISS files
or a Milvus collection, as the settings' vector store says).

Decoding and resizing run in a pool of worker processes; several batched requests are in flight
to Triton at once, over every endpoint of settings.triton_endpoints (cxr.triton.sync_client: one
that cannot be reached is ejected and its batches go to another). Progress is kept in
<output>.partial/ (indexing.chunk_cache) as each batch returns, so a killed build resumes where it
stopped; the finished index replaces the old one in one rename.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr.archives import Record
from cxr.catalog import ExportedModel
from cxr.errors import FailedPreconditionError
from cxr.images import InvalidImageError, NotComparableError, preprocess
from cxr.settings import Settings
from cxr.store import faiss_files, faiss_writer, index_types
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient
from indexing.chunk_cache import ChunkCache


NOT_COMPARABLE = "not a chest image to compare"  # what skipped.csv says before the reason


class NothingToIndexError(FailedPreconditionError):
    """Not one image of the archive could be read."""


def _summary(skipped: list[tuple[str, str]]) -> str:
    """'7466 file not found' or '3 file not found, 1 empty file (0 bytes)'."""
    counts: dict[str, int] = {}
    for _, reason in skipped:
        kind = reason.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class BuildOptions:
    batch_size: int = 32
    workers: int = max(1, min(4, (os.cpu_count() or 2)))
    in_flight: int = 4
    index_type: str = "flat"
    rerank: bool = False  # keep full vectors beside a compressed index to re-score its candidates
    use_gpu: bool = False  # train and fill the index on the GPU (faiss-gpu)
    progress: bool = True


def _decode(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    """(position, pixels or None, reason): runs in a worker process."""
    position, path, size = job
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return position, None, "file not found"
    except OSError as exc:
        return position, None, f"unreadable: {exc.strerror or exc}"
    if not data:
        return position, None, "empty file (0 bytes)"
    return decode_bytes(position, data, size)


def decode_bytes(key, data: bytes, size: int) -> tuple[object, np.ndarray | None, str]:
    """(key, pixels or None, reason) for image bytes from any source: runs in a worker process."""
    try:
        return key, preprocess(data, size), ""
    except NotComparableError as exc:  # a report, raw detector data, another body part (cxr.dicom_content)
        return key, None, f"{NOT_COMPARABLE}: {exc.reason}"
    except InvalidImageError as exc:
        return key, None, f"not a readable image: {exc}"


def decoder_pool(workers: int):
    """The worker processes that decode and resize (spawned: no fork of a process holding gRPC channels)."""
    return multiprocessing.get_context("spawn").Pool(workers)


def _state(records: list[Record], model: ExportedModel, index_type: str) -> dict:
    fingerprint = hashlib.sha256("\n".join(f"{r.image_id}\t{r.path}" for r in records).encode()).hexdigest()
    return {"model": model.name, "export_sha256": model.export_sha256,
            "records": fingerprint, "index_type": index_type}


def build_index(records: list[Record], model: ExportedModel, settings: Settings, output_dir: Path,
                options: BuildOptions = BuildOptions(), source: str = "", backend=None) -> dict:
    """Encode `records`' images with `model` through Triton and write the index to `output_dir`, or
    into `backend` (a cxr.store.interface.StoreBackend, e.g. Milvus) when given; progress stays in
    <output_dir>.partial either way."""
    index_types.check_count(options.index_type, len(records))  # before the encoding, not after it
    partial = ChunkCache(output_dir.with_name(output_dir.name + ".partial"), _state(records, model, options.index_type),
                         key="position")
    todo = [(i, str(r.path), model.image_size) for i, r in enumerate(records) if not partial.done(i)]
    client = TowerClient(connections(settings), model.image, model.text, model.max_batch_size)
    bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="img", desc=f"indexing {model.name}",
               disable=not options.progress, dynamic_ncols=True)
    try:
        _encode(todo, partial, client, options, bar)
    finally:
        bar.close()
        client.close()
    return _finish(records, model, partial, output_dir, options, source, backend)


def embed_records(records: list[Record], model: ExportedModel, settings: Settings,
                  options: BuildOptions = BuildOptions()) -> dict[int, np.ndarray]:
    """The vectors of `records`' images by position, through Triton as a build encodes them, kept in memory
    (for a few thousand images: a validation split); images that cannot be read are left out."""
    vectors: dict[int, np.ndarray] = {}
    todo = [(i, str(r.path), model.image_size) for i, r in enumerate(records)]
    client = TowerClient(connections(settings), model.image, model.text, model.max_batch_size)
    bar = tqdm(total=len(records), unit="img", desc=f"embedding with {model.name}", disable=not options.progress,
               dynamic_ncols=True)
    try:
        with decoder_pool(options.workers) as pool:
            encode_stream(pool.imap(_decode, todo, chunksize=8), client, options, bar,
                          lambda keys, batch: vectors.update(zip(keys, batch)), lambda key, reason: None)
    finally:
        bar.close()
        client.close()
    return vectors


def _encode(todo, partial: ChunkCache, client: TowerClient, options: BuildOptions, bar: tqdm) -> None:
    with decoder_pool(options.workers) as pool:
        encode_stream(pool.imap(_decode, todo, chunksize=8), client, options, bar, partial.add_batch,
                      partial.add_skipped, skipped_before=len(partial.skipped))


def encode_stream(decoded, client: TowerClient, options: BuildOptions, bar: tqdm, on_batch, on_skipped,
                  skipped_before: int = 0) -> None:
    """Batch decoded images ((key, pixels or None, reason), from any source) to Triton, `in_flight`
    requests at once; `on_batch(keys, vectors)` runs on a sender thread as each batch returns,
    `on_skipped(key, reason)` for each image that could not be read."""
    pending: list[Future] = []
    batch_keys: list = []
    batch_pixels: list[np.ndarray] = []
    skipped = skipped_before
    with ThreadPoolExecutor(options.in_flight) as senders:
        def flush():
            if batch_keys:
                keys, pixels = list(batch_keys), np.stack(batch_pixels)
                pending.append(senders.submit(lambda: on_batch(keys, client.embed_images(pixels))))
                batch_keys.clear()
                batch_pixels.clear()
            while len(pending) >= options.in_flight or (pending and pending[0].done()):
                pending.pop(0).result()

        for key, pixels, reason in decoded:
            if pixels is None:
                on_skipped(key, reason)
                skipped += 1
                bar.set_postfix(skipped=skipped, refresh=False)
            else:
                batch_keys.append(key)
                batch_pixels.append(pixels)
                if len(batch_keys) == options.batch_size:
                    flush()
            bar.update(1)
        flush()
        for future in pending:
            future.result()


def _finish(records, model: ExportedModel, partial: ChunkCache, output_dir: Path, options: BuildOptions,
            source: str, backend) -> dict:
    positions = sorted(partial.vectors)
    vectors = (np.stack([partial.vectors[p] for p in positions]).astype(np.float32) if positions
               else np.zeros((0, model.embed_dim), np.float32))
    skipped = [(str(records[p].path), reason) for p, reason in sorted(partial.skipped.items())]
    if not positions:
        report = output_dir.with_name(output_dir.name + ".skipped.csv")
        faiss_files.write_skipped(report, skipped)
        partial.discard()
        raise NothingToIndexError(f"none of the {len(records)} images could be read ({_summary(skipped)}); "
                                  f"the reasons are in {report}. Nothing was written: any existing index in "
                                  f"{output_dir} is kept. Check --images-dir.")
    manifest = {"model": model.name, "dim": model.embed_dim, "source": source,
                "export_sha256": model.export_sha256,
                "archive_images": len(records)}
    rows = [records[p].metadata() for p in positions]
    written = write_index(vectors, rows, skipped, manifest, output_dir, options, backend)
    partial.discard()
    return written


def write_index(vectors: np.ndarray, rows: list[dict], skipped: list[tuple[str, str]], manifest: dict,
                output_dir: Path, options: BuildOptions, backend=None) -> dict:
    """The whole index, swapped in at once: FAISS files in `output_dir`, or `backend` (e.g. Milvus)."""
    index_types.check_count(options.index_type, len(vectors))
    model = manifest["model"]
    if backend is None:
        return faiss_writer.write(output_dir, vectors, rows, manifest, skipped, options.index_type, options.use_gpu,
                                 options.rerank)
    return backend.write(model, vectors, rows, manifest, skipped, options.index_type, options.rerank)
