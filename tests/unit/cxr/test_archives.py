"""Archive readers on the real IU-Xray and NIH CSVs, and on generic manifests."""

import json

import pytest

from cxr import archives
from support import DATA_DIR

IU = DATA_DIR / "iu"
NIH = DATA_DIR / "nih800"


def test_iu_xray_gives_one_record_per_projection_joined_to_its_report(tmp_path):
    records = archives.iu_xray(IU / "indiana_reports.csv", IU / "indiana_projections.csv", tmp_path)
    assert len(records) == 7466
    assert {r.projection for r in records} == {"Frontal", "Lateral"}
    first = records[0]
    assert (first.study_uid, first.image_id, first.path) == ("1", "1_IM-0001-4001.dcm.png", tmp_path / first.filename)
    assert first.labels == ("No Finding",) and "cardiac silhouette" in first.findings and first.impression


def test_nih_labels_split_findings_and_map_views_to_projections():
    records = archives.nih_labels(NIH / "labels.csv", NIH)
    assert len(records) == 800 and all(r.path.is_file() for r in records)
    assert all(r.projection in ("Frontal", "Lateral") for r in records)
    multi = next(r for r in records if len(r.labels) > 1)
    assert "No Finding" not in multi.labels


def test_manifest_csv_and_jsonl(tmp_path):
    (tmp_path / "m.csv").write_text("image,text,labels,projection\na.png,left effusion,Effusion|Edema,Frontal\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "b.png", "labels": ["Mass"], "study_uid": "s1"}) + "\n")
    (csv_record,) = archives.manifest(tmp_path / "m.csv")
    (json_record,) = archives.manifest(tmp_path / "m.jsonl", images_dir=tmp_path / "imgs")
    assert csv_record.labels == ("Effusion", "Edema") and csv_record.findings == "left effusion"
    assert csv_record.path == tmp_path / "a.png"
    assert (json_record.study_uid, json_record.labels, json_record.path) == ("s1", ("Mass",), tmp_path / "imgs/b.png")


def test_missing_columns_and_files_are_named(tmp_path):
    (tmp_path / "bad.csv").write_text("uid,filename\n1,a.png\n")
    with pytest.raises(archives.ArchiveError, match="projection"):
        archives.iu_xray(IU / "indiana_reports.csv", tmp_path / "bad.csv", tmp_path)
    with pytest.raises(archives.ArchiveFileMissingError, match="not found"):
        archives.nih_labels(tmp_path / "nowhere.csv", tmp_path)
