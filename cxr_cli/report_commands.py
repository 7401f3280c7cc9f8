"""`cxr reports listen | import`: radiology reports from the RIS (HL7 v2 over MLLP), the EHR (FHIR
NDJSON) or a CSV, into the report ledger of a model's index; the gateway attaches them to the hits."""

from __future__ import annotations

from cxr.reports.intake import ReportIntake
from cxr.reports.ledger import ReportLedger
from cxr.settings import Settings


def intake(settings: Settings, model: str = "") -> ReportIntake:
    """The intake of `model`'s ledger (the active model's when empty), labelling with cxr.reports.labeler."""
    from cxr.reports.labeler import labels

    return ReportIntake(ReportLedger(settings.reports_path(model or settings.model)), labels)


def add_commands(sub) -> None:
    reports = sub.add_parser("reports", help="receive radiology reports (HL7 v2 over MLLP, FHIR, CSV) for an index")
    commands = reports.add_subparsers(dest="reports_command", required=True)
    _add_listen(commands)


def _add_listen(commands) -> None:
    listen = commands.add_parser(
        "listen", help="receive ORU^R01 reports from the RIS over MLLP (HL7 v2) into a model's report ledger, "
                       "each answered AA, AE or AR; Ctrl-C stops")
    listen.add_argument("--port", type=tcp_port, help="TCP port (default: reports_mllp_port, 2575; 0: any free one)")
    listen.add_argument("--host", help="address to listen on (default: reports_mllp_host, 127.0.0.1); beyond "
                                       "loopback only with allow_insecure: MLLP has no encryption nor authentication")
    listen.add_argument("--model", help="whose ledger the reports go to (default: the active model)")
    listen.set_defaults(func=cmd_reports_listen)


def tcp_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def cmd_reports_listen(args, settings: Settings) -> int:
    """Listen until SIGINT or SIGTERM; one log line per message (its control id and outcome, no patient data)."""
    import asyncio
    import logging

    from cxr import registry
    from cxr.reports.hl7 import FieldRef
    from cxr.reports.mllp import MllpListener, serve

    model = args.model or settings.model
    registry.get_model(model)  # a misspelt name would fill a ledger no index reads
    host = args.host or settings.reports_mllp_host
    port = settings.reports_mllp_port if args.port is None else args.port
    _check_host(host, settings)
    FieldRef.parse(settings.reports_accession_field)  # before the ledger is opened
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ledger_path = settings.reports_path(model)
    listener = MllpListener(intake(settings, model), settings.reports_accession_field)

    def ready(bound_host: str, bound_port: int) -> None:
        print(f"listening for HL7 v2 ORU^R01 over MLLP on {bound_host}:{bound_port} for {model}, into "
              f"{ledger_path}; Ctrl-C stops", flush=True)

    asyncio.run(serve(listener, host, port, ready))
    print("stopped", flush=True)
    return 0


def _check_host(host: str, settings: Settings) -> None:
    from cxr.settings import SettingsError, is_loopback

    if not (is_loopback(host) or settings.allow_insecure):
        raise SettingsError(f"cxr reports listen on {host}: MLLP carries reports unencrypted and unauthenticated, "
                            "so it listens on loopback only: bring the RIS's connection in through a TLS tunnel "
                            "(stunnel) to 127.0.0.1, or set allow_insecure = true on a network only the RIS reaches")
