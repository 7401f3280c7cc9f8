"""indexing.pacs_reports without a PACS: the SR of the indexed studies reach the ledger through the
intake, the newest report of a study last; a patient mismatch, an SR naming no study, a dose report
and a failed fetch are counted, not fatal; an SR read once is not fetched again (a real Orthanc:
tests/integration/indexing/test_dicomweb_build.py)."""

import pytest
from pydicom.uid import generate_uid

from cxr.dicomweb import Instance, InstanceFetchError
from cxr.reports.intake import ReportIntake
from cxr.reports.ledger import ReportLedger
from cxr.reports.report import ReportStatus
from cxr.store.interface import StudyIdentity
from indexing.pacs_reports import ReportCounts, ReportReader
from support import sr


class FakePacs:
    """SR datasets by study; `broken` SOP uids fail to fetch; every fetch is counted."""

    def __init__(self, datasets, broken=()):
        self.datasets = {d.SOPInstanceUID: d for d in datasets}
        self.broken, self.fetched = set(broken), []

    def report_instances(self, studies):
        studies = list(studies)
        return [Instance(d.StudyInstanceUID, d.SeriesInstanceUID, sop) for study in studies
                for sop, d in self.datasets.items() if d.StudyInstanceUID == study]

    def dataset(self, instance):
        self.fetched.append(instance.sop_uid)
        if instance.sop_uid in self.broken:
            raise InstanceFetchError("HTTP 500")
        return self.datasets[instance.sop_uid]


@pytest.fixture
def ledger(tmp_path):
    return ReportLedger(tmp_path / "reports" / "m.sqlite")


def _reader(pacs, ledger, tmp_path, opened=None):
    def intake():
        if opened is not None:
            opened.append(True)
        return ReportIntake(ledger, lambda text: ())
    return ReportReader(pacs, tmp_path, intake)


def test_the_newest_report_of_a_study_is_the_one_kept_and_others_are_counted(ledger, tmp_path):
    study, other = generate_uid(), generate_uid()
    final = sr.text_report(sr.COMPREHENSIVE, study, "P1", "Effusion.", "Final words.", accession="A1",
                           content_time="160000")
    preliminary = sr.text_report(sr.BASIC_TEXT, study, "P1", "Effusion?", "Draft.", accession="A1",
                                 verified=False, content_time="090000")
    dose = sr.dose_report(other, "P2")
    broken = sr.text_report(sr.BASIC_TEXT, other, "P2", "Clear.", "Normal.", accession="A2")
    pacs = FakePacs([final, preliminary, dose, broken], broken=[broken.SOPInstanceUID])
    counts = _reader(pacs, ledger, tmp_path).read_studies([study, other, study])
    assert counts == ReportCounts(stored=2, attached=0, other=1, failed=1)
    kept = {s.report.key: s.report for s in ledger.changes()}
    assert kept["accession:A1"].status is ReportStatus.FINAL and kept["accession:A1"].impression == "Final words."
    assert "accession:A2" not in kept and "1 could not be fetched" in str(counts) and "2 reports from SR" in str(counts)

    pacs.broken.clear()
    pacs.fetched.clear()
    again = _reader(pacs, ledger, tmp_path).read_studies([study, other])  # a rebuild: a new reader, same cache
    assert pacs.fetched == [broken.SOPInstanceUID] and again == ReportCounts(stored=1)
    assert kept["accession:A1"] == {s.report.key: s.report for s in ledger.changes()}["accession:A1"]


def test_a_report_naming_another_patients_indexed_study_is_refused_and_counted(ledger, tmp_path):
    mine, theirs = generate_uid(), generate_uid()
    ledger.set_studies([StudyIdentity(mine, mine, "A1", "P1"), StudyIdentity(theirs, theirs, "A2", "P2")])
    pacs = FakePacs([sr.text_report(sr.BASIC_TEXT, mine, "P1", "Clear.", "Normal.", accession="A1"),
                     sr.text_report(sr.ENHANCED, theirs, "P1", "Mass.", "Mass.", accession="A2")])
    counts = _reader(pacs, ledger, tmp_path).read_studies([mine, theirs])
    assert counts == ReportCounts(stored=1, attached=1, refused=1)
    assert "1 refused for a patient mismatch" in str(counts) and "P1" not in str(counts)
    assert [s.report.study_instance_uid for s in ledger.changes()] == [mine]


def test_an_sr_naming_no_study_is_counted_invalid(ledger, tmp_path):
    study = generate_uid()
    nameless = sr.text_report(sr.BASIC_TEXT, study, "P1", "Clear.", "Normal.")
    pacs = FakePacs([nameless])
    listed = pacs.report_instances([study])
    nameless.StudyInstanceUID = ""  # the PACS lists it under its study; the object names none
    pacs.report_instances = lambda studies: listed
    assert _reader(pacs, ledger, tmp_path).read_studies([study]) == ReportCounts(invalid=1)


def test_no_intake_is_opened_when_the_studies_hold_no_report(ledger, tmp_path):
    study, opened = generate_uid(), []
    pacs = FakePacs([sr.dose_report(study, "P1")])
    assert _reader(pacs, ledger, tmp_path, opened).read_studies([study]) == ReportCounts(other=1)
    assert not opened and not _reader(FakePacs([]), ledger, tmp_path, opened).read_studies([study])
