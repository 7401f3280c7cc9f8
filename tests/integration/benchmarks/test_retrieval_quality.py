"""The quality tasks through the real gateway on an IU-Xray-layout archive (the real IU reports
and projections CSV rows; NIH images stand in for the IU images, which are not here)."""

import csv
import shutil
from dataclasses import replace

import pytest

from benchmarks.retrieval_quality import search_all
from cxr import archives
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
STUDIES = 4


def _iu_archive(root):
    iu = DATA_DIR / "iu"
    with (iu / "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, reports = reader.fieldnames, [row for row in reader][:STUDIES]
    uids = {r["uid"] for r in reports}
    with (iu / "indiana_projections.csv").open(newline="", encoding="utf-8") as f:
        projections = [row for row in csv.DictReader(f) if row["uid"] in uids]
    for name, rows, columns in (("reports.csv", reports, fields), ("projections.csv", projections,
                                                                    ["uid", "filename", "projection"])):
        with (root / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    (root / "images").mkdir()
    stand_ins = sorted((DATA_DIR / "nih800" / "valid" / "1_abnormal").glob("*.png"))
    for row, image in zip(projections, stand_ins):
        shutil.copy(image, root / "images" / row["filename"])
    return archives.iu_xray(root / "reports.csv", root / "projections.csv", root / "images")


def test_report_to_image_and_label_tasks_on_an_iu_layout_archive(served, tmp_path):
    records = _iu_archive(tmp_path)
    settings = replace(served, model="cxr-mini", index_dir=tmp_path / "indexes")
    build_index(records, ExportedModel.load(served.model_repository, "cxr-mini"), settings,
                settings.index_path("cxr-mini"), BuildOptions(progress=False))
    gateway = BackgroundGateway(settings)
    try:
        with RetrievalClient(gateway.address) as client:
            result = search_all(client, records)
    finally:
        gateway.stop()
    with_reports = {r.study_uid for r in records if r.report}
    report_task = result["report_to_image"]
    assert report_task["model"]["queries"] == len(with_reports) >= 3
    assert 0 < report_task["model"]["mAP"] <= 1 and 0 < report_task["random"]["mAP"] < 1
    assert "image_to_image" in result and "No Finding" in result["text_to_image"]["model"]["per_label_AP"]
