"""Where every report source hands its reports: checked against the study they name, labelled, stored.

The one safety rule lives here, so HL7, FHIR, SR and CSV obey it alike: a report whose patient id
differs from that of the indexed study it names is refused, because a report attached to another
patient's images is dangerous. A report for a study not indexed yet is stored and waits; the gateway
applies the same check when the study arrives (gateway.report_feed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cxr.errors import FailedPreconditionError
from cxr.reports.ledger import ReportLedger, StudyIdentity
from cxr.reports.report import Report, ReportStatus

log = logging.getLogger("cxr.reports")


class PatientMismatchError(FailedPreconditionError):
    """The report's patient is not the patient of the study it names."""


@dataclass(frozen=True)
class Accepted:
    seq: int  # the report's place in the ledger
    attached: bool  # its study is indexed (else it waits for the study)


def patient_differs(report_patient: str, identity: StudyIdentity) -> bool:
    """Both sides name a patient and they differ. An index row without a patient id (file archives)
    or with its study uid standing in for one cannot be checked."""
    known = identity.patient_id if identity.patient_id != identity.study_uid else ""
    return bool(report_patient.strip() and known.strip()) and report_patient.strip() != known.strip()


class ReportIntake:
    def __init__(self, ledger: ReportLedger, label: Callable[[str], tuple[str, ...]]):
        """`label`: the labeler, report text -> finding labels (cxr.reports.labeler.labels)."""
        self.ledger = ledger
        self.label = label

    def accept(self, report: Report) -> Accepted:
        """Store `report` (PatientMismatchError when it names another patient's study)."""
        identity = self.ledger.study(report.accession_number, report.study_instance_uid)
        if identity is not None and patient_differs(report.patient_id, identity):
            log.warning("refused a %s report: its patient id differs from the indexed study's (ledger %s)",
                        report.source or "", self.ledger.path.name)
            raise PatientMismatchError("the report's patient id differs from the PatientID of the study it names: "
                                       "not attached; check the order in the RIS")
        labels = () if report.status is ReportStatus.CANCELLED else self.label(report.text)
        seq = self.ledger.put(report, labels)
        return Accepted(seq, identity is not None)
