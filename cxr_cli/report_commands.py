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
    del commands  # `listen` and `import` are added here
