"""Each way a file can fail to be a readable recording gets its own clear line (and nothing is created
beside it)."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import synth

from rllmtop.errors import UserError
from rllmtop.events import SessionState
from rllmtop.record import reader
from rllmtop.record.reader import open_recording
from rllmtop.record.writer import Recorder


def refused(path: Path) -> UserError:
    with pytest.raises(UserError) as e:
        open_recording(path)
    assert str(path) in e.value.what and e.value.hint and "\n" not in e.value.what + e.value.hint
    return e.value


def closed_recording(path: Path, n: int = 200) -> Path:
    rng = random.Random(1)
    rec = Recorder(path, synth.info())
    for i in range(n):
        rec.handle(synth.done_event(synth.record(i, i * 0.01, rng)))
        rec.handle(synth.scrape(i * 0.01, i))
    rec.close(SessionState.DONE)
    return path


def test_a_directory_is_not_a_recording(tmp_path: Path) -> None:
    """Before: "no such recording", for a path that exists."""
    e = refused(tmp_path)
    assert "is a directory, not a recording" in e.what and ".db" in e.hint


def test_a_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.db"
    p.write_bytes(b"")
    assert "is empty (0 bytes)" in refused(p).what


def test_a_truncated_file(tmp_path: Path) -> None:
    p = closed_recording(tmp_path / "full.db")
    data = p.read_bytes()
    half = tmp_path / "half.db"
    half.write_bytes(data[: len(data) // 2 // 4096 * 4096])
    e = refused(half)
    assert "is truncated" in e.what and "of the" in e.what and "copy it again" in e.hint
    odd = tmp_path / "odd.db"
    odd.write_bytes(data[:5000])
    assert "is truncated" in refused(odd).what
    tiny = tmp_path / "tiny.db"
    tiny.write_bytes(data[:50])
    assert "is truncated" in refused(tiny).what


def test_not_sqlite_and_not_rllmtop(tmp_path: Path) -> None:
    txt = tmp_path / "notes.db"
    txt.write_text("hello" * 100)
    assert "not an SQLite database" in refused(txt).what
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert "is an SQLite database but not an rllmtop recording" in refused(other).what


def test_a_copy_without_its_wal_says_to_copy_the_wal(tmp_path: Path) -> None:
    """Before: "not an rllmtop recording" (the 4 KB file holds nothing; everything is in the -wal)."""
    live = tmp_path / "live"
    live.mkdir()
    path = live / "run.db"
    rec = Recorder(path, synth.info())
    rec.handle(synth.done_event(synth.record(0, 0.1, random.Random(2))))
    rec.flush()
    try:
        assert (live / "run.db-wal").stat().st_size > 0
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(path, copy / "run.db")
        e = refused(copy / "run.db")
        assert "copied without its -wal file" in e.what and "run.db-wal" in e.hint
        assert sorted(p.name for p in copy.iterdir()) == ["run.db"]  # nothing created beside it
        shutil.copy(live / "run.db-wal", copy / "run.db-wal")  # with it, the copy opens
        with open_recording(copy / "run.db") as got:
            assert got.status is SessionState.INCOMPLETE and len(got.requests()) == 1
    finally:
        rec.close(SessionState.DONE)


def test_a_locked_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: "damaged and cannot be read (database is locked)"."""
    p = closed_recording(tmp_path / "locked.db", 20)
    monkeypatch.setattr(reader, "BUSY_TIMEOUT", 0.05)
    holder = sqlite3.connect(p, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        e = refused(p)
        assert "is locked by another process (a run still recording?)" in e.what
        assert "damaged" not in e.what
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with open_recording(p) as got:
        assert len(got.requests()) == 20


def test_a_file_locked_after_opening_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = closed_recording(tmp_path / "later.db", 20)
    monkeypatch.setattr(reader, "BUSY_TIMEOUT", 0.05)
    got = open_recording(p)
    got._db.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(p, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(UserError, match="locked by another process"):
            got.requests()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        got.close()


def test_a_fifo_is_not_a_recording(tmp_path: Path) -> None:
    import os

    p = tmp_path / "pipe.db"
    os.mkfifo(p)
    assert "not a regular file" in refused(p).what
