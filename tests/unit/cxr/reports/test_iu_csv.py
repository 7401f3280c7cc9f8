"""cxr.reports.iu_csv on the real IU-Xray indiana_reports.csv: one final report per row with text, keyed
by the archive's uid; rows without text named by line; a CSV of other columns refused."""

import csv

import pytest

from cxr.reports.iu_csv import read_csv
from cxr.reports.report import InvalidReportError, Report, ReportStatus
from support import DATA_DIR

IU_REPORTS = DATA_DIR / "iu" / "indiana_reports.csv"


def test_every_row_with_text_is_a_final_report_of_its_uid():
    with IU_REPORTS.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    read = list(read_csv(IU_REPORTS))
    reports = [item for _, item in read if isinstance(item, Report)]
    invalid = [(number, str(item)) for number, item in read if isinstance(item, InvalidReportError)]
    textless = [r for r in rows if not (r["findings"].strip() or r["impression"].strip())]
    assert len(read) == len(rows) and len(invalid) == len(textless) > 0
    assert len(reports) == len(rows) - len(textless)
    assert all("neither findings nor impression" in reason for _, reason in invalid)
    by_uid = {r.study_instance_uid: r for r in reports}
    second = by_uid[rows[1]["uid"]]
    assert (second.findings, second.impression) == (rows[1]["findings"], rows[1]["impression"])
    assert second.impression == "No acute pulmonary findings."
    assert (second.status, second.patient_id, second.accession_number, second.source) == (
        ReportStatus.FINAL, "", "", "csv")
    assert read[1][0] == 3  # line 1 is the header


def test_a_csv_without_the_iu_columns_is_refused_by_name(tmp_path):
    other = tmp_path / "labels.csv"
    other.write_text("path,labels\na.png,Mass\n")
    with pytest.raises(InvalidReportError, match=r"lacks the columns \['uid', 'findings', 'impression'\]"):
        list(read_csv(other))


def test_a_quoted_report_over_several_lines_is_named_by_its_first(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text('uid,findings,impression\n1,"Clear.\nNormal heart.",Normal.\n2,,\n')
    read = list(read_csv(path))
    assert read[0][0] == 2 and read[0][1].findings == "Clear.\nNormal heart."
    assert read[1][0] == 4 and str(read[1][1]) == "line 4: neither findings nor impression"
