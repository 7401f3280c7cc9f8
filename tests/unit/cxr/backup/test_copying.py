"""Files copied into a backup: hashed as copied, owner-only; appended files up to their last whole line;
SQLite ledgers as one consistent snapshot that holds the commits still in the -wal file."""

import sqlite3
import threading

import pytest

from cxr.backup.copying import Changed, make_folder, sqlite_snapshot, stream
from cxr.backup.manifest import checksum


def test_a_file_is_copied_owner_only_with_its_checksum(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"\x00\x01" * 3_000_000)
    copied = stream(source, tmp_path / "backup" / "deep" / "a.bin")
    assert copied == checksum(source) == checksum(tmp_path / "backup" / "deep" / "a.bin")
    assert (tmp_path / "backup" / "deep" / "a.bin").stat().st_mode & 0o777 == 0o600
    assert [(tmp_path / p).stat().st_mode & 0o777 for p in ("backup", "backup/deep")] == [0o700, 0o700]


def test_a_file_that_is_not_what_its_writer_recorded_is_refused(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"now")
    with pytest.raises(Changed):
        stream(source, tmp_path / "copy", {"bytes": 3, "sha256": "0" * 64})


def test_an_appended_file_is_copied_up_to_its_last_whole_line(tmp_path):
    source = tmp_path / "listed.jsonl"
    source.write_bytes(b'["a"]\n' * 100_000 + b'["half')  # a line being written as the copy runs
    assert stream(source, tmp_path / "copy.jsonl", whole_lines=True)["bytes"] == 600_000
    assert (tmp_path / "copy.jsonl").read_bytes() == b'["a"]\n' * 100_000
    (tmp_path / "none").write_bytes(b"no newline yet")
    assert stream(tmp_path / "none", tmp_path / "none-copy", whole_lines=True)["bytes"] == 0


def test_a_ledger_snapshot_holds_the_commits_still_in_its_wal(tmp_path):
    db = sqlite3.connect(tmp_path / "m.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # every commit stays in m.sqlite-wal
    db.execute("CREATE TABLE reports (seq INTEGER PRIMARY KEY, impression TEXT)")
    db.executemany("INSERT INTO reports (impression) VALUES (?)", [("clear",)] * 500)
    assert (tmp_path / "m.sqlite-wal").stat().st_size > 0
    make_folder(tmp_path / "backup")
    copied, reports = sqlite_snapshot(tmp_path / "m.sqlite", tmp_path / "backup" / "m.sqlite")
    db.close()
    assert reports == 500 and copied == checksum(tmp_path / "backup" / "m.sqlite")
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["m.sqlite"]  # one file, no -wal beside it
    assert (tmp_path / "backup" / "m.sqlite").stat().st_mode & 0o777 == 0o600


def test_a_ledger_written_during_its_snapshot_copies_one_consistent_state(tmp_path):
    path = tmp_path / "m.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE reports (seq INTEGER PRIMARY KEY, body TEXT)")
    setup.executemany("INSERT INTO reports (body) VALUES (?)", [("x" * 2000,)] * 2000)  # several steps of pages
    setup.close()
    stop = threading.Event()

    def write():
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        while not stop.is_set():
            db.execute("INSERT INTO reports (body) VALUES (?)", ("y" * 2000,))
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        _, reports = sqlite_snapshot(path, tmp_path / "copy.sqlite")
    finally:
        stop.set()
        writer.join()
    copy = sqlite3.connect(tmp_path / "copy.sqlite")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    seqs = [seq for (seq,) in copy.execute("SELECT seq FROM reports ORDER BY seq")]
    assert reports == len(seqs) >= 2000 and seqs == list(range(1, len(seqs) + 1))  # a prefix: no commit torn
