"""`cxr search`: a query through the gateway, its hits printed as a table."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from cxr.settings import Settings


def cmd_search(args, settings: Settings) -> int:
    import grpc

    from cxr.client import RetrievalClient

    settings = replace(settings, **{name: value for name in ("ca", "client_cert", "client_key", "token")
                                    if (value := getattr(args, name)) is not None})
    filters = dict(top_k=args.top_k, model=args.model or "", projections=args.projection or [],
                   labels=args.label or [], group_by_study=args.group_by_study)
    with RetrievalClient.from_settings(settings) as client:
        try:
            if args.kind == "text":
                response = client.search_text(args.query, **filters)
            else:
                response = client.search_image(Path(args.query).read_bytes(), **filters)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    print_hits(response)
    return 0


def print_hits(response) -> None:
    """A table of hits; accession and date when the archive came from a PACS, image counts when grouped."""
    print(f"model: {response.model}")
    dicom = any(hit.accession_number or hit.study_date for hit in response.hits)
    grouped = any(hit.image_ids for hit in response.hits)
    rows = [("rank", "score", "study", *(("accession", "date") if dicom else ()), *(("images",) if grouped else ()),
             "projection", "labels", "impression")]
    for hit in response.hits:
        rows.append((str(hit.rank), f"{hit.score:.3f}", hit.study_uid,
                     *((hit.accession_number or "-", hit.study_date or "-") if dicom else ()),
                     *((str(len(hit.image_ids)),) if grouped else ()), hit.projection or "-",
                     ", ".join(hit.labels) or "-", _clip(hit.impression or hit.findings or "-", 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

