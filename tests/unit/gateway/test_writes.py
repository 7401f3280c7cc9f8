"""The folders the gateway writes, and its look at each at start (gateway/writes.py)."""

import logging
import os
from dataclasses import replace
from pathlib import Path

from cxr.settings import Settings
from gateway import writes


def test_each_written_folder_is_named_by_its_setting(tmp_path):
    settings = Settings(index_dir=tmp_path / "indexes", model="medsiglip")
    assert writes.written_folders(settings) == {"reports_dir": tmp_path / "indexes" / "reports"}
    placed = replace(settings, reports_dir=tmp_path / "reports", audit_log=tmp_path / "audit" / "a.jsonl",
                     index_copy_dir=tmp_path / "copies")
    assert writes.written_folders(placed) == {"reports_dir": tmp_path / "reports", "audit_log": tmp_path / "audit",
                                              "index_copy_dir": tmp_path / "copies"}
    assert placed.reports_path("medsiglip").parent == writes.written_folders(placed)["reports_dir"]
    assert set(writes.CONSEQUENCES) >= set(writes.written_folders(placed))


def test_a_folder_is_writable_when_it_or_the_nearest_one_above_is(tmp_path, monkeypatch):
    assert writes.writable(tmp_path) and writes.writable(tmp_path / "not" / "yet")
    (tmp_path / "a-file").write_text("")
    assert not writes.writable(tmp_path / "a-file" / "below")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real(path, mode))
    assert not writes.writable(read_only) and not writes.writable(read_only / "reports")
    assert writes.writable(tmp_path)


def test_the_gateway_says_at_start_which_folder_it_cannot_write_and_what_that_costs(tmp_path, monkeypatch, caplog):
    read_only = tmp_path / "indexes"
    read_only.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real(path, mode))
    settings = Settings(index_dir=read_only, audit_log=tmp_path / "audit" / "a.jsonl")
    with caplog.at_level(logging.ERROR, "cxr.gateway"):
        assert writes.check_writable(settings) == ["reports_dir"]
    (record,) = caplog.records
    assert str(read_only / "reports") in record.getMessage() and "CXR_REPORTS_DIR" in record.getMessage()
    assert writes.check_writable(replace(settings, reports_dir=tmp_path / "reports")) == []
