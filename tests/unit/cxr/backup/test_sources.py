"""Consistent copies while writers work: a FAISS index copied as one committed generation of one build
(a commit or a compaction during the copy is either in it whole or not at all), a PACS cache with its
follow position first and no half line, the audit log across a rotation during its copy."""

import json
from pathlib import Path

import pytest

from cxr.backup import copying, sources
from cxr.backup.create import PACS_CACHE_SUFFIX
from cxr.store.errors import IndexCorruptError
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from gateway.audit_chain import log_files, read_key, verify
from indexing import chunk_cache, dicomweb_build, pacs_reports
from support import unit_vectors
from support.backup_stack import DIM, MODEL


def _rows(directory) -> list[str]:
    store = FaissBackend(directory.parent).open(directory.name, dim=DIM)
    try:
        hits = store.search(unit_vectors(1, DIM, seed=3), store.count)[0]
        return sorted(row["image_id"] for row in store.rows([i for i, _ in hits]))
    finally:
        store.close()


def _on_call(monkeypatch, number: int, action):
    """Run `action` before the `number`th file copy (1-based) of sources' copies."""
    calls = []

    def stream(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == number:
            action()
        return copying.stream(*args, **kwargs)

    monkeypatch.setattr(sources, "stream", stream)
    return calls


def test_an_index_copy_is_the_build_and_its_committed_generation(stack, tmp_path):
    source = stack.settings.index_path(MODEL)
    files, details = sources.faiss_index(source, tmp_path / "copy" / MODEL)
    assert _rows(tmp_path / "copy" / MODEL) == _rows(source)
    assert "new-0" in _rows(source) and "2" not in _rows(source)  # a commit's add and a study deleted
    assert details["generation"] == 2 and details["pending"] == 5 and details["count"] == 40
    assert {"manifest.json", "skipped.csv", "index.faiss", "changes/generation.json"} <= set(files)


def test_a_commit_during_the_copy_of_the_build_is_in_the_copy(stack, tmp_path, monkeypatch):
    source = stack.settings.index_path(MODEL)
    rows = ({"image_id": "late", "study_uid": "late-study", "projection": "Frontal"},)
    _on_call(monkeypatch, 3, lambda: stack.backend.apply(MODEL, Change(unit_vectors(1, DIM, seed=8), rows,
                                                                       export_sha256="e1")))
    _, details = sources.faiss_index(source, tmp_path / "copy" / MODEL)
    assert details["generation"] == 3 and "late" in _rows(tmp_path / "copy" / MODEL)


def test_a_compaction_swapped_in_during_the_copy_starts_it_again(stack, tmp_path, monkeypatch):
    source = stack.settings.index_path(MODEL)
    calls = _on_call(monkeypatch, 2, lambda: stack.backend.compact(MODEL))
    files, details = sources.faiss_index(source, tmp_path / "copy" / MODEL)
    assert details["generation"] == 2 and details["pending"] == 0 and details["count"] == 41  # 40 + 3 - 2 folded
    assert "changes/generation.json" in files  # the compacted build's carried-over generation (nothing pending)
    assert _rows(tmp_path / "copy" / MODEL) == _rows(source)
    assert len(calls) > len(files)  # the first copy was given up


def test_a_damaged_build_is_refused_rather_than_copied(stack, tmp_path):
    table = stack.settings.index_path(MODEL) / "table" / "image_id.bytes"
    table.write_bytes(table.read_bytes()[::-1])
    with pytest.raises(IndexCorruptError, match="with no writer at work: the index in .* is damaged; rebuild it"):
        sources.faiss_index(stack.settings.index_path(MODEL), tmp_path / "copy" / MODEL)


def test_a_cache_is_copied_position_first_and_without_a_half_line(stack, tmp_path, monkeypatch):
    cache = stack.settings.index_dir / f"{MODEL}.dicomweb"
    with (cache / "listed.jsonl").open("a") as f:
        f.write('["st", "se", "so')  # a follower appending
    (cache / "writing-chunk-000001.npz").write_bytes(b"unfinished")
    calls = _on_call(monkeypatch, 0, lambda: None)
    files = sources.pacs_cache(cache, tmp_path / "copy")
    assert [p.name for p in calls][:2] == ["follow.json", "state.json"]
    assert sorted(files) == ["chunk-000000.npz", "follow.json", "listed.jsonl", "state.json"]
    assert (tmp_path / "copy" / "listed.jsonl").read_text() == '["st", "se", "sop1"]\n'


def test_the_cache_and_audit_names_are_those_their_writers_use():
    assert dicomweb_build.cache_dir(Path("indexes/m")).name == "m" + PACS_CACHE_SUFFIX
    appended = (dicomweb_build.LISTED_FILE, chunk_cache.SKIPPED_FILE, pacs_reports.READ_FILE)
    whole = (dicomweb_build.FOLLOW_FILE, chunk_cache.STATE_FILE)
    assert all(name.endswith(sources.APPENDED_SUFFIXES) for name in appended)
    assert not any(name.endswith(sources.APPENDED_SUFFIXES) for name in whole)
    assert all(name.endswith(".json") for name in whole)  # copied first
    assert sources.WRITING_PREFIX == chunk_cache.WRITING


def test_an_audit_log_rotated_during_its_copy_is_copied_again_whole(stack, tmp_path, monkeypatch):
    live = stack.settings.audit_log
    calls = _on_call(monkeypatch, 2, lambda: stack.audit(300))  # past audit_max_bytes: it rotates
    files, details = sources.audit_log(live, tmp_path / "audit", with_key=True)
    copied = tmp_path / "audit" / live.name
    fault, checked = verify(log_files([copied]), read_key(tmp_path / "audit" / details["key"]))
    assert fault is None and checked == details["lines"] >= 400
    assert len(details["rotated"]) >= 3
    names = [p.name for p in calls]
    assert names.count("audit.log") == 2 and len(names) == len(set(names)) + 1  # the live file again, no other
    assert [json.loads(line)["seq"] for line in copied.read_text().splitlines()][-1] == checked - 1


def test_an_audit_copy_without_its_key_records_the_keys_digest(stack, tmp_path):
    files, details = sources.audit_log(stack.settings.audit_log, tmp_path / "audit", with_key=False)
    assert details["key"] is None and len(details["key_sha256"]) == 64
    assert not any(name.endswith(".key") for name in files) and not list((tmp_path / "audit").glob("*.key"))
