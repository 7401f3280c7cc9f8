"""`make demo`: the whole product on this machine, then everything stopped.

Exports the demo model, starts Triton and the gateway, indexes the NIH sample archive through
Triton, asks the gateway a few text and image questions over gRPC and prints the ranked studies.
The gateway runs as a hospital would run it (mutual TLS, tokens, an audit log) with a development
PKI; `--insecure` (make demo INSECURE=1) runs it in plaintext without them.
To index your own IU-Xray download instead:
  cxr index build --reports-csv indiana_reports.csv --projections-csv indiana_projections.csv \\
      --images-dir images/ --model <model>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import grpc

from cxr import gateway_process, processes, registry
from cxr.client import RetrievalClient
from cxr.dev_pki import dev_security
from cxr.manifest import read_export_manifest
from cxr.settings import Settings, load_settings
from cxr.store import faiss_files
from cxr.triton import server_process
from cxr_cli.search_commands import print_hits
from cxr_cli.serve_commands import page_url

TEXT_QUERIES = ["small left pleural effusion", "cardiomegaly", "no acute cardiopulmonary abnormality"]
IMAGE_QUERIES = ["00000001_000.png", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"]


def _ensure_exported(spec, settings: Settings) -> bool:
    """Export unless the repository holds this model from the same weights; True if exported."""
    from export.repository import default_precision, export_model, resolve_source

    manifest = read_export_manifest(settings.model_repository, spec.name)
    if manifest is not None and manifest["source"]["checkpoint"] == resolve_source(spec, settings, None) \
            and manifest["precision"] == default_precision(spec, "local"):
        return False
    export_model(spec, settings)
    return True


def _ensure_indexed(spec, settings: Settings, stale: bool) -> None:
    if not stale and faiss_files.read_manifest(settings.index_path(spec.name)) is not None:
        return
    from cxr import archives
    from cxr.catalog import ExportedModel
    from indexing.build import build_index

    archive = settings.data_dir / "nih800"
    records = archives.nih_labels(archive / "labels.csv", archive)
    build_index(records, ExportedModel.load(settings.model_repository, spec.name), settings,
                settings.index_path(spec.name), source=str(archive))


def _ask(spec, settings: Settings) -> None:
    if spec.is_twin:
        print(f"\nNOTE: {spec.name} is a random-weight twin of {spec.twin_of}: export, serving, indexing and "
              "search are the real ones; the ranking is not.")
    elif spec.is_embedded:
        print(f"\nNOTE: {spec.name} is a small demo model trained here on 600 NIH images at 64 px "
              f"({spec.embedded_weights.relative_to(registry.REPO_ROOT)}/MODEL_CARD.md): better than chance, "
              "far from a real encoder, not for clinical use.")
    with RetrievalClient.from_settings(settings) as client:
        for text in TEXT_QUERIES:
            print(f"\n$ cxr search text {text!r}")
            print_hits(client.search_text(text, top_k=5))
        for name in IMAGE_QUERIES:
            print(f"\n$ cxr search image {name}")
            print_hits(client.search_image((settings.data_dir / "cxr_samples" / name).read_bytes(), top_k=5))
    if settings.auth == "token":
        _show_refusal_and_audit(settings)


def _show_refusal_and_audit(settings: Settings) -> None:
    from gateway import audit_chain

    print("\n$ cxr search text 'effusion'   # the same client certificate, no token")
    try:
        RetrievalClient.from_settings(replace(settings, token=""), retries=0).search_text("effusion")
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}")
    time.sleep(0.2)  # the refusal's audit line is written as the call ends
    problem, lines = audit_chain.verify_log(settings.audit_log)
    last = json.loads(settings.audit_log.read_text().splitlines()[-1])
    print(f"\n$ cxr audit verify {settings.audit_log}\n" + ("intact" if problem is None else f"BROKEN: {problem}") +
          f": {lines} lines. The last one (no query text, only its HMAC):\n{json.dumps(last)[:400]}")


def run(model: str, secure: bool = True) -> int:
    settings = replace(load_settings(), model=model)
    if secure:
        settings = dev_security(settings, settings.run_dir / "dev-pki", "demo-clinician", ["search", "studies"],
                                audit_log=settings.run_dir / "demo-audit.log")
    spec = registry.get_model(model)
    exported = _ensure_exported(spec, settings)
    children = []
    try:
        triton, log_file = server_process.start(settings)
        children.append(triton)
        server_process.wait_ready(settings, [spec.image_model, spec.text_model], triton, 300, log_file)
        print(f"Triton ready on {settings.triton_grpc_url}")
        _ensure_indexed(spec, settings, stale=exported)
        gateway, gateway_log = gateway_process.start(settings)
        children.append(gateway)
        gateway_process.wait_answering(settings, gateway, gateway_log)
        gateway_process.wait_serving(settings)
        security = f"mutual TLS, tokens, audit log {settings.audit_log}" if secure else "plaintext, no auth"
        print(f"gateway SERVING on {settings.gateway_address} ({security})")
        _ask(spec, settings)
    finally:
        for child in reversed(children):
            processes.stop_process(child)
    print("\ngateway and Triton stopped.")
    print(f"Search page: `make serve`, then open {page_url(load_settings())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry name (default: the active model)")
    parser.add_argument("--insecure", action="store_true", help="plaintext, no tokens, no audit log")
    args = parser.parse_args(argv)
    return run(args.model or load_settings().model, secure=not args.insecure)


if __name__ == "__main__":
    sys.exit(main())
