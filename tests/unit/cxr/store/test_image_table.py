"""Metadata columns: rows come back as written, a study's images are found, filters become bitmaps."""

import json

import numpy as np
import pytest

from cxr.store.errors import UnknownFilterError
from cxr.store.image_table import ImageTable, TableWriter, population, write_table
from support import index_metadata


def _rows(n):
    return [dict(row, filename=f"{i}.png", findings=f"report {i} — ümlaut", labels=row["labels"] + ["Mass"] * (i == 4))
            for i, row in enumerate(index_metadata(n))]


def test_rows_come_back_as_written_with_every_column(tmp_path):
    rows = _rows(9)
    write_table(tmp_path / "t", rows)
    table = ImageTable(tmp_path / "t")
    back = table.rows(range(9))
    assert [{k: r[k] for k in rows[0]} for r in back] == rows
    assert back[0]["impression"] == "" and back[4]["labels"] == ["No Finding", "Mass"]


def test_a_study_is_found_whatever_the_row_order(tmp_path):
    rows = _rows(10)[::-1]  # studies s4..s0, each with two images
    writer = TableWriter(tmp_path / "t")
    writer.append(rows[:3])
    writer.append(rows[3:])
    writer.close()
    table = ImageTable(tmp_path / "t")
    assert [r["image_id"] for r in table.study("s2")] == ["5", "4"]
    assert table.study("s9") == [] and table.study("") == []


def test_bitmaps_or_within_a_kind_and_across_kinds_and_ignore_case(tmp_path):
    write_table(tmp_path / "t", _rows(12))
    table = ImageTable(tmp_path / "t")
    bits = np.unpackbits(table.bitmap(["frontal"], ["EFFUSION", "mass"]), bitorder="little", count=12)
    assert np.flatnonzero(bits).tolist() == [0, 2, 4, 6, 8]  # frontal, and effusion or mass
    assert table.bitmap() is None and population(None, 12) == 12
    assert population(table.bitmap(labels=["Effusion"]), 12) == 4


def test_an_unknown_filter_value_names_the_known_ones(tmp_path):
    write_table(tmp_path / "t", _rows(6))
    with pytest.raises(UnknownFilterError, match=r"projection filter value\(s\) at position 2 are not in this index; "
                                                 r"it has \['Frontal', 'Lateral'\]") as error:
        ImageTable(tmp_path / "t").check(projections=["Frontal", "AP"])
    assert "AP" not in str(error.value).split(";")[0]


def test_an_empty_table_reads(tmp_path):
    write_table(tmp_path / "t", [])
    table = ImageTable(tmp_path / "t")
    assert table.count == 0 and table.rows([]) == [] and table.study("s0") == []


def test_an_image_is_found_by_its_id_also_in_a_table_written_before_the_lookup_file(tmp_path):
    rows = _rows(10)[::-1]
    write_table(tmp_path / "t", rows)
    assert ImageTable(tmp_path / "t").image("7")["filename"] == "7.png"
    (tmp_path / "t" / "image.order.npy").unlink()  # as an index from before thumbnails
    table = ImageTable(tmp_path / "t")
    assert table.image("3")["filename"] == "3.png" and table.image("nope") is None


def test_an_index_from_before_the_dicom_columns_reads_them_as_absent(tmp_path):
    write_table(tmp_path / "t", _rows(2))
    info_file = tmp_path / "t" / "table.json"
    info = json.loads(info_file.read_text())
    info["columns"] = [c for c in info["columns"] if "instance" not in c]
    info_file.write_text(json.dumps(info))
    row = ImageTable(tmp_path / "t").rows([1])[0]
    assert row["image_id"] == "1" and "sop_instance_uid" not in row


def test_a_report_amends_every_row_of_its_study_and_the_label_filter_follows(tmp_path):
    write_table(tmp_path / "t", _rows(12))  # study s2: rows 4 (Mass too) and 5
    table = ImageTable(tmp_path / "t")
    before = population(table.bitmap(labels=["Mass"]), 12)
    fields = {"findings": "new text", "impression": "", "labels": ["Pneumothorax"], "report_status": "final",
              "report_time": "2026-12-01T10:00:00", "labels_derived": True}
    table.amend({"s2": fields, "no-such-study": fields})
    assert [r["findings"] for r in table.study("s2")] == ["new text", "new text"]
    assert all(r["labels"] == ["Pneumothorax"] and r["labels_derived"] for r in table.study("s2"))
    assert table.rows([3])[0]["findings"] == "report 3 — ümlaut" and "labels_derived" not in table.rows([3])[0]
    bits = np.unpackbits(table.bitmap(labels=["pneumothorax"]), bitorder="little", count=12)
    assert np.flatnonzero(bits).tolist() == [4, 5] and "Pneumothorax" in table.label_names
    assert population(table.bitmap(labels=["Mass"]), 12) == before - 2  # rows 4 and 5 lost theirs with the old labels
    table.amend({"s2": dict(fields, labels=[])})  # a cancelled report: no labels
    assert population(table.bitmap(labels=["Pneumothorax"]), 12) == 0
    assert np.flatnonzero(np.unpackbits(table.bitmap(labels=["Effusion"]), bitorder="little", count=12)).tolist() \
        == [0, 3, 6, 9]  # rows of other studies keep theirs


def test_studies_are_listed_once_with_their_identities(tmp_path):
    rows = [dict(row, accession_number=f"A{row['study_uid']}", patient_id=f"P{i // 4}")
            for i, row in enumerate(_rows(6))]
    write_table(tmp_path / "t", rows[::-1])
    assert list(ImageTable(tmp_path / "t").studies()) == [
        ("s0", "", "As0", "P0"), ("s1", "", "As1", "P0"), ("s2", "", "As2", "P1")]
