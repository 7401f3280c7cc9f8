"""How many of an image's nearest neighbours are its own patient's, with and without exclude_same_patient,
on a built FAISS index (read only: the store maps a private copy).

  python -m benchmarks.same_patient --index-dir indexes/cxr-mini [--image-id 00000116_017.png] [--k 10]

The query is the image's own vector from the index (what embedding its file gives, as the build did); the
exclusion is the one the gateway applies (Filter.exclude_patients, the patient from the image's row). Prints
counts, never the patient id.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cxr.store import faiss_store
from cxr.store.interface import Filter
from gateway.service import archived_identity


def same_patient(index_dir: Path, image_id: str, k: int) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as copies:
        store = faiss_store.load(index_dir, copy_dir=Path(copies))
        (row,) = store.table.matching("image_id", image_id)[:1]
        patient, _ = archived_identity(store, image_id)
        query = store.index.reconstruct(row)[None]
        counts = {}
        for name, flt in (("plain", Filter()), ("exclude_same_patient", Filter.of(exclude_patients=[patient]))):
            rows = store.rows([i for i, _ in store.search(query, k, flt)[0]])
            counts[name] = {"hits": len(rows), "same_patient": sum(r["patient_id"] == patient for r in rows),
                            "itself": any(r["image_id"] == image_id for r in rows)}
        return {"model": store.manifest["model"], "images": store.count, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--image-id", default="00000116_017.png")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    result = same_patient(args.index_dir, args.image_id, args.k)
    for name in ("plain", "exclude_same_patient"):
        found = result[name]
        itself = "in" if found["itself"] else "out"
        print(f"{result['model']} ({result['images']} images), top {args.k} of {args.image_id}, {name}: "
              f"{found['hits']} hits, {found['same_patient']} of its patient, itself {itself}")


if __name__ == "__main__":
    main()
