"""`make demo`: export a model, serve it with Triton, embed real chest X-rays and report text,
print what each query finds, stop Triton.

Queries Triton directly; the retrieval gateway and the FAISS index replace this path when they land.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np

from cxr import registry, tritonserver
from cxr.images import load_pixels
from cxr.manifest import read_manifest, tokenizer_dir
from cxr.settings import load_settings
from cxr.tokenization import TextTokenizer
from cxr.towers import towers
from cxr.triton_client import TowerClient

QUERIES = ["small left pleural effusion", "cardiomegaly", "no acute cardiopulmonary abnormality"]
ARCHIVE_IMAGES = 48


def _archive(data_dir, count: int):
    """The first `count` validation images of the NIH sample with their finding labels."""
    root = data_dir / "nih800"
    with (root / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "valid"][:count]
    return [root / r["path"] for r in rows], [r["finding_labels"] for r in rows]


def run(model: str) -> int:
    settings = load_settings()
    spec = registry.get_model(model)
    if read_manifest(settings.model_repository, model) is None:
        from export.repository import export_model

        export_model(spec, settings)
    process, log_file = tritonserver.start(settings)
    try:
        tritonserver.wait_ready(settings, [spec.image_model, spec.text_model], process, 300, log_file)
        _query(spec, settings)
    finally:
        tritonserver.stop_process(process)
    print("Triton stopped.")
    return 0


def _query(spec, settings) -> None:
    manifest = read_manifest(settings.model_repository, spec.name)
    tokenizer = TextTokenizer(tokenizer_dir(settings.model_repository, spec.name), manifest["context_length"],
                              spec.text_inputs, manifest["tokenizer"]["clean"])
    client = TowerClient(settings.triton_grpc_url, *towers(spec), spec.batching.max_batch_size)
    paths, labels = _archive(settings.data_dir, ARCHIVE_IMAGES)
    started = time.perf_counter()
    image_embeds = client.embed_images(load_pixels(paths, spec.image_size))
    text_embeds = client.embed_texts(tokenizer(QUERIES))
    seconds = time.perf_counter() - started
    print(f"\n{spec.name}: embedded {len(paths)} chest X-rays and {len(QUERIES)} queries through Triton "
          f"in {seconds:.2f} s ({image_embeds.shape[1]}-d)")
    if spec.is_twin:
        print(f"NOTE: {spec.name} is a random-weight twin of {spec.twin_of}: the plumbing is real, the ranking is not.")
    for query, scores in zip(QUERIES, text_embeds @ image_embeds.T):
        print(f"\nquery: {query!r}")
        for rank, i in enumerate(np.argsort(-scores)[:3], 1):
            print(f"  {rank}. {scores[i]:+.3f}  {paths[i].name:<20} {labels[i]}")
    client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="registry name (default: the active model)")
    args = parser.parse_args(argv)
    return run(args.model or load_settings().model)


if __name__ == "__main__":
    sys.exit(main())
