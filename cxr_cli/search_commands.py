"""`cxr search`: a query through the gateway with the client package (cxr_client), its hits printed as a table."""

from __future__ import annotations

import sys
from dataclasses import replace

from cxr.settings import Settings

PLAINTEXT_TOKEN = ("a token would go to {address} in plaintext: give the CA of the gateway's certificate "
                   "(--ca, CXR_CA), or say --insecure for a gateway on loopback or a trusted network")


def cmd_search(args, settings: Settings) -> int:
    import cxr_client

    settings = replace(settings, **{name: value for name in ("ca", "client_cert", "client_key", "token")
                                    if (value := getattr(args, name)) is not None})
    filters = dict(top_k=args.top_k, model=args.model or "", projections=args.projection or [],
                   labels=args.label or [], group_by_study=args.group_by_study)
    try:
        with _client(settings, args.insecure, args.timeout) as client:
            if args.kind == "text":
                response = client.search_text(args.query, **filters)
            else:
                response = client.search_image(args.query, **filters)
    except cxr_client.CxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the image file: missing, a folder, unreadable
        print(f"error: cannot read the image {args.query}: {error.strerror or error}", file=sys.stderr)
        return 2
    print_hits(response)
    return 0


def _client(settings: Settings, insecure: bool, timeout: float):
    """A client of the settings' gateway: TLS with their CA (mutual TLS with their client files), else plaintext,
    as `cxr serve` runs without TLS; a token over plaintext only when the user says --insecure."""
    import cxr_client

    plaintext = settings.ca is None
    if plaintext and settings.token and not insecure:
        raise cxr_client.ConfigurationError(PLAINTEXT_TOKEN.format(address=settings.gateway_address))
    return cxr_client.Client(settings.gateway_address, ca=settings.ca, client_cert=settings.client_cert,
                             client_key=settings.client_key, token=settings.token or None, insecure=plaintext,
                             timeout=timeout)


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
