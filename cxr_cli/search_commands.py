"""`cxr search`: a query through the gateway with the client package (cxr_client), its hits printed as a table or,
with --json, as one JSON document."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from cxr.settings import Settings
from cxr_cli import exit_codes

PLAINTEXT_TOKEN = ("a token would go to {address} in plaintext: give the CA of the gateway's certificate "
                   "(--ca, CXR_CA), or say --insecure for a gateway on loopback or a trusted network")
EXCERPT_CHARS = 60  # of a hit's report: what the table shows, and all --json shows (report text is patient data)


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
    except cxr_client.ConfigurationError as error:  # refused before any call: a flag or a setting to change
        print(f"error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except cxr_client.CxrError as error:  # the gateway's answer, or none: exits as the same kind here would
        print(f"error: {_described(error, settings.gateway_address)}", file=sys.stderr)
        return exit_codes.of_status(error.code.name if error.code is not None else None)
    except OSError as error:  # the image file: missing, a folder, unreadable
        print(f"error: cannot read the image {args.query}: {error.strerror or error}", file=sys.stderr)
        return exit_codes.of_error(error)
    if args.json:
        print(json.dumps(search_document(response), indent=2, ensure_ascii=False))
    else:
        print_hits(response)
    return 0


def _described(error, address: str) -> str:
    """The client's one line, naming the gateway when it did not answer at all (no request id)."""
    import cxr_client

    if isinstance(error, (cxr_client.Unavailable, cxr_client.DeadlineExceeded)) and not error.request_id:
        return f"{error.code.name}: the gateway at {address}: {error.message}"
    return str(error)


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


def search_document(response) -> dict:
    """What --json prints: the model and each hit's ranking, identities and labels, with the same report excerpt
    as the table (never the whole report, nor the image's file name, which a plain run does not show either).
    Every key is always there, empty where the hit has no value."""
    return {"model": response.model, "hits": [{
        "rank": hit.rank, "score": round(hit.score, 6), "image_id": hit.image_id, "study_uid": hit.study_uid,
        "projection": hit.projection, "labels": list(hit.labels), "labels_derived": hit.labels_derived,
        "study_instance_uid": hit.study_instance_uid, "series_instance_uid": hit.series_instance_uid,
        "sop_instance_uid": hit.sop_instance_uid, "accession_number": hit.accession_number,
        "study_date": hit.study_date, "view_position": hit.view_position, "viewer_url": hit.viewer_url,
        "image_ids": list(hit.image_ids), "report_excerpt": _clip(hit.impression or hit.findings, EXCERPT_CHARS),
    } for hit in response.hits], "suggestions": [
        {"label": s.label, "probability": round(s.probability, 4), "neighbours": s.neighbours}
        for s in response.suggestions]}


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
                     ", ".join(hit.labels) or "-", _clip(hit.impression or hit.findings, EXCERPT_CHARS) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if response.suggestions:
        print("findings of similar archived cases (calibrated; evidence, not a diagnosis): " + ", ".join(
            f"{s.label} {s.probability:.2f} ({s.neighbours} neighbours)" for s in response.suggestions))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
