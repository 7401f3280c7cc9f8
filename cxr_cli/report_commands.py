"""`cxr reports listen | import`: radiology reports from the RIS (HL7 v2 over MLLP), the EHR (FHIR
NDJSON) or a CSV, into the report ledger of a model's index; the gateway attaches them to the hits."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import InvalidArgumentError, NotFoundError
from cxr.reports.intake import PatientMismatchError, ReportIntake
from cxr.reports.ledger import ReportLedger
from cxr.reports.report import InvalidReportError, Report
from cxr.settings import Settings

NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")
SHOWN_INVALID = 20  # invalid lines listed by number and reason; the rest are counted


def intake(settings: Settings, model: str = "") -> ReportIntake:
    """The intake of `model`'s ledger (the active model's when empty), labelling with cxr.reports.labeler."""
    from cxr.reports.labeler import labels

    return ReportIntake(ReportLedger(settings.reports_path(model or settings.model)), labels)


def add_commands(sub) -> None:
    reports = sub.add_parser("reports", help="receive radiology reports (HL7 v2 over MLLP, FHIR, CSV) for an index")
    commands = reports.add_subparsers(dest="reports_command", required=True)
    _add_listen(commands)
    _add_import(commands)


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


def _add_import(commands) -> None:
    imported = commands.add_parser("import", help="store the reports of a FHIR R4 Bulk Data NDJSON file "
                                                  "(DiagnosticReport, with its ImagingStudy and Patient resources) "
                                                  "or of an IU-Xray indiana_reports.csv in a model's ledger")
    imported.add_argument("file", type=Path, help=".ndjson (FHIR) or .csv (IU-Xray: uid, findings, impression)")
    imported.add_argument("--model", help="whose index the reports are for (default: the active model)")
    imported.set_defaults(func=cmd_reports_import)


class NoUsableReportError(InvalidArgumentError):
    """A report file from which nothing could be stored."""


@dataclass
class ImportCounts:
    stored: int = 0
    attached: int = 0  # of those stored, to a study of the index (the others wait for theirs)
    refused: int = 0  # a patient id that differs from the indexed study's
    skipped: int = 0  # lines that are no radiology report (other resources, laboratory reports)
    invalid: int = 0
    reasons: list[str] = field(default_factory=list)  # why, by line number: the first SHOWN_INVALID

    def __str__(self) -> str:
        return (f"{self.stored} stored ({self.attached} attached to indexed studies, {self.stored - self.attached} "
                f"waiting for their study), {self.refused} refused for a patient mismatch, {self.invalid} invalid "
                f"lines" + (f", {self.skipped} lines skipped (not a radiology report)" if self.skipped else ""))


def cmd_reports_import(args, settings: Settings) -> int:
    """`cxr reports import FILE`: every report of the file through the intake; a summary, never the text."""
    from tqdm import tqdm

    path: Path = args.file
    if not path.exists():
        raise NotFoundError(f"{path}: no such file; give a FHIR NDJSON export or an IU-Xray indiana_reports.csv")
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: not a file; give a FHIR NDJSON export or an IU-Xray "
                                   "indiana_reports.csv")
    model = args.model or settings.model
    counts, into = ImportCounts(), intake(settings, model)
    with tqdm(total=_line_count(path), unit="line", desc=f"importing reports for {model}",
              dynamic_ncols=True) as bar:
        for number, item in report_lines(path):
            _hand_over(item, into, counts)
            bar.update(number - bar.n)
    for reason in counts.reasons:
        print(f"invalid: {reason}", file=sys.stderr)
    if counts.invalid > len(counts.reasons):
        print(f"... and {counts.invalid - len(counts.reasons)} more invalid lines", file=sys.stderr)
    print(f"{path.name}: {counts}; ledger {into.ledger.path}")
    if counts.refused:
        print("refused reports name another patient than their indexed study's PatientID: check the order in the RIS"
              + ("; a FHIR export names patients by record number only with its Patient resources"
                 if path.suffix.lower() != ".csv" else ""))
    if not counts.stored:
        raise NoUsableReportError(f"no report of {path} could be stored: give a FHIR R4 NDJSON file of "
                                  "DiagnosticReport resources naming their study (accession identifier or "
                                  "ImagingStudy), or an IU-Xray CSV with uid, findings and impression")
    return 0


def report_lines(path: Path) -> Iterator[tuple[int, Report | InvalidReportError | None]]:
    """The file's reports by line: NDJSON by its extension or a first '{', else the IU-Xray CSV."""
    from cxr.reports import fhir, iu_csv

    suffix = path.suffix.lower()
    if suffix in NDJSON_SUFFIXES or (suffix != ".csv" and _first_character(path) == "{"):
        return fhir.read_ndjson(path)
    return iu_csv.read_csv(path)


def _hand_over(item: Report | InvalidReportError | None, into: ReportIntake, counts: ImportCounts) -> None:
    if isinstance(item, InvalidReportError):
        counts.invalid += 1
        if len(counts.reasons) < SHOWN_INVALID:
            counts.reasons.append(str(item))
    elif item is None:
        counts.skipped += 1
    else:
        try:
            counts.attached += into.accept(item).attached
            counts.stored += 1
        except PatientMismatchError:
            counts.refused += 1


def _first_character(path: Path) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        return f.read(4096).lstrip()[:1]


def _line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
