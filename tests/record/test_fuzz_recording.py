"""A recording fuzzer: damaged files never make a reader raise anything but a clear UserError, and a
file whose content changed is reported as not trustworthy (refused, or ``verify()`` not ok).

Seeded mutations of real recordings: bits flipped in data pages, cells edited through sqlite3 (wrong
types, out-of-enum text, non-JSON labels, huge numbers), rows deleted, tables and columns dropped, the
file truncated; for a recording still being written, its ``-wal`` deleted, truncated or flipped. After
each: open, verify, read everything, replay through :class:`ReplaySource`, export (forced, and not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import synth

from rllmtop.errors import UserError
from rllmtop.events import ClientHealth, EngineInfo, LogEvent, SessionState, StateEvent, WorkerEvent
from rllmtop.record.export import export_recording
from rllmtop.record.reader import REQUEST_COLUMNS, open_recording
from rllmtop.record.rebuild import request_events
from rllmtop.record.replay import ReplaySource
from rllmtop.record.writer import Recorder

FAST_CASES = 300
SLOW_CASES = 1500


def _write(path: Path, close: bool) -> Recorder:
    rng = random.Random(7)
    info = synth.info(engines=(EngineInfo("http://127.0.0.1:8001", url="http://127.0.0.1:8001"),))
    rec = Recorder(path, info)
    rec.handle(StateEvent(0.0, SessionState.RUNNING))
    for i in range(24):
        s = synth.scrape(i * 0.25, i)
        rec.handle(
            s
            if i % 3
            else type(s)(**{**{f: getattr(s, f) for f in s.__slots__}, "engine_id": "http://127.0.0.1:8001"})
        )  # type: ignore[attr-defined]
    for i in range(30):
        for ev in request_events(synth.record(i, 0.1 + i * 0.15, rng, reasoning=rng.randint(5, 60))):
            rec.handle(ev)
    rec.handle(LogEvent(1.5, "engine", "warning", "KV cache is 95% full"))
    rec.handle(ClientHealth(2.0, 0.5, 0.003, 0.001, cpu_s=0.2))
    rec.handle(WorkerEvent(0.1, 1, "started", pid=99))
    if close:
        rec.close(SessionState.DONE, "fine")
    else:
        rec.flush()
    return rec


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("orig")
    closed = d / "closed.db"
    _write(closed, close=True)
    live_dir = d / "live"
    live_dir.mkdir()
    rec = _write(live_dir / "live.db", close=False)
    snap = d / "walsnap"
    snap.mkdir()
    for name in ("live.db", "live.db-wal"):
        shutil.copy(live_dir / name, snap / name)
    rec.close(SessionState.DONE)
    return {"closed": closed, "wal": snap / "live.db"}


def dump(path: Path) -> list[tuple[str, list[str]]] | None:
    """Every row of every table, as text (repr: 5 and 5.0 differ), or None when SQLite cannot read it."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            db.text_factory = bytes  # text as stored, even when it is not UTF-8
            return [(n, sorted(repr(r) for r in db.execute(f'SELECT * FROM "{n}"'))) for n in names]
        finally:
            db.close()
    except sqlite3.Error:
        return None


# ------------------------------------------------------------------------------------------ mutations

_ODD: list[Any] = [
    "text", "", "in_flight", "xyz", "{", "[[1,2]]", "[[\"a\"]]", -1, 0, 1, 2, 2**62, -(2**62), 1e300, -1e300,
    0.5, b"\x00\x01\x02", b"\x01", None, "nan", "1e9",
]  # fmt: skip


def _flip(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 4096
    for _ in range(rng.randint(1, 8)):
        off = rng.randrange(page, len(data)) if len(data) > page else rng.randrange(len(data))
        data[off] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return "flip"


def _rows(db: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple[Any, ...]], str]:
    cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
    pk = [r[1] for r in sorted(db.execute(f'PRAGMA table_info("{table}")'), key=lambda r: r[5]) if r[5]]
    key = pk or ["rowid"]
    keys = db.execute(f'SELECT {", ".join(key)} FROM "{table}"').fetchall()
    return cols, keys, " AND ".join(f"{k} IS ?" for k in key)


def _tables(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def _edit(path: Path, rng: random.Random) -> str:
    db = sqlite3.connect(path)
    try:
        for _ in range(rng.randint(1, 3)):
            table = rng.choice(_tables(db))
            cols, keys, where = _rows(db, table)
            if not keys:
                continue
            col = rng.choice(cols)
            with contextlib.suppress(sqlite3.Error):  # a NOT NULL / UNIQUE refusal: that edit did not happen
                db.execute(
                    f'UPDATE "{table}" SET "{col}" = ? WHERE {where}', (rng.choice(_ODD), *rng.choice(keys))
                )
        db.commit()
    finally:
        db.close()
    return "edit"


def _delete(path: Path, rng: random.Random) -> str:
    db = sqlite3.connect(path)
    try:
        table = rng.choice(_tables(db))
        _, keys, where = _rows(db, table)
        if keys:
            db.execute(f'DELETE FROM "{table}" WHERE {where}', rng.choice(keys))
        db.commit()
    finally:
        db.close()
    return "delete"


def _drop(path: Path, rng: random.Random) -> str:
    db = sqlite3.connect(path)
    try:
        table = rng.choice(_tables(db))
        if rng.random() < 0.5:
            db.execute("DROP VIEW IF EXISTS sample_values")
            db.execute(f'DROP TABLE "{table}"')
        else:
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")') if not r[5]]
            if cols:
                with contextlib.suppress(sqlite3.Error):  # indexed columns cannot be dropped
                    db.execute("DROP VIEW IF EXISTS sample_values")
                    db.execute(f'ALTER TABLE "{table}" DROP COLUMN "{rng.choice(cols)}"')
        db.commit()
    finally:
        db.close()
    return "drop"


def _truncate(path: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])
    return "truncate"


def _wal(path: Path, rng: random.Random) -> str:
    wal = path.with_name(path.name + "-wal")
    how = rng.choice(["delete", "truncate", "flip"])
    if how == "delete":
        wal.unlink()
    elif how == "truncate":
        wal.write_bytes(wal.read_bytes()[: rng.randrange(wal.stat().st_size)])
    else:
        _flip(wal, rng)
    return f"wal-{how}"


_CLOSED: list[Callable[[Path, random.Random], str]] = [
    _flip,
    _flip,
    _edit,
    _edit,
    _edit,
    _delete,
    _drop,
    _truncate,
]


# ------------------------------------------------------------------------------------------ one case


def _read_everything(path: Path, out: Path, do_export: bool) -> tuple[bool | None, str]:
    """(verify().ok or None when refused, the refusal or summary). Only UserError may escape the reader."""
    try:
        rec = open_recording(path)
    except UserError as e:
        return None, e.what
    try:
        report = rec.verify()
        assert isinstance(report.summary, str) and "\n" not in report.summary
        _ = (rec.info, rec.status, rec.status_detail, rec.duration, rec.metadata, rec.problems)
        with contextlib.suppress(UserError):
            rec.requests()
            rec.request_columns(REQUEST_COLUMNS)
            rec.samples()
            rec.histograms()
            rec.scrapes(full=True)
            rec.states()
            rec.logs()
            rec.client_health()
            rec.worker_events()
            list(rec.stream())
            list(rec.stream(after=1.0, until=2.0, progress_from=1.5))
            asyncio.run(_replay(rec))
        if do_export:
            with contextlib.suppress(UserError):
                export_recording(path, "jsonl", out / "plain")
            if not report.ok:
                with pytest.raises(UserError, match="cannot be trusted"):
                    export_recording(path, "csv", out / "refused")
            with contextlib.suppress(UserError):
                export_recording(path, "csv", out / "forced", force=True)
        return report.ok, report.summary
    finally:
        rec.close()


async def _replay(rec: Any) -> None:
    src = ReplaySource(rec)
    src.pause()
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(lambda r: None, stop))
    src.seek(src.duration)
    await asyncio.wait_for(src.settled(), 30)
    src.seek(src.duration / 2)
    await asyncio.wait_for(src.settled(), 30)
    stop.set()
    await asyncio.wait_for(task, 30)


def _case(originals: dict[str, Path], tmp: Path, seed: int) -> str:
    rng = random.Random(seed)
    work = tmp / f"c{seed}"
    work.mkdir()
    wal_case = rng.random() < 0.2
    src = originals["wal" if wal_case else "closed"]
    path = work / src.name
    shutil.copy(src, path)
    if wal_case:
        shutil.copy(src.with_name(src.name + "-wal"), path.with_name(path.name + "-wal"))
        how = _wal(path, rng)
        before = None
    else:
        before = dump(path)
        how = rng.choice(_CLOSED)(path, rng)
    after = dump(path) if not wal_case else None
    ok, said = _read_everything(path, work, do_export=seed % 4 == 0)
    if not wal_case and (after is None or after != before):
        assert ok is not True, f"seed {seed} ({how}): the content changed but verify() said {said!r}"
    if how == "wal-delete":
        assert ok is None and "-wal" in said, said  # the 4 KB file alone holds nothing: copy the -wal
    shutil.rmtree(work, ignore_errors=True)
    return how


def test_untouched_recordings_verify(originals: dict[str, Path], tmp_path: Path) -> None:
    """The oracle's baseline: both originals are whole."""
    for src in originals.values():
        work = tmp_path / src.parent.name
        work.mkdir()
        for f in src.parent.iterdir():
            if f.name.startswith(src.name):
                shutil.copy(f, work / f.name)
        ok, said = _read_everything(work / src.name, work, do_export=True)
        assert ok is True, said


@pytest.mark.parametrize("block", range(6))
def test_damaged_recordings(originals: dict[str, Path], tmp_path: Path, block: int) -> None:
    n = FAST_CASES // 6
    for seed in range(block * n, (block + 1) * n):
        _case(originals, tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(30))
def test_damaged_recordings_slow(originals: dict[str, Path], tmp_path: Path, block: int) -> None:
    n = SLOW_CASES // 30
    for seed in range(10_000 + block * n, 10_000 + (block + 1) * n):
        _case(originals, tmp_path, seed)


def test_the_fuzzer_changes_content_and_is_caught(originals: dict[str, Path], tmp_path: Path) -> None:
    """Not vacuous: most mutations of the closed file change its content, and each of those is caught."""
    changed = caught = 0
    for seed in range(60):
        rng = random.Random(seed)
        work = tmp_path / f"m{seed}"
        work.mkdir()
        path = work / "closed.db"
        shutil.copy(originals["closed"], path)
        before = dump(path)
        rng.choice([_flip, _edit, _delete])(path, rng)
        if dump(path) != before:
            changed += 1
            ok, _ = _read_everything(path, work, do_export=False)
            caught += ok is not True
    assert changed >= 40 and caught == changed


def test_a_bit_flipped_value_is_caught_by_its_checksum(originals: dict[str, Path], tmp_path: Path) -> None:
    """Before: flips inside data pages passed quick_check and exports changed silently."""
    path = tmp_path / "one.db"
    shutil.copy(originals["closed"], path)
    db = sqlite3.connect(path)
    (value,) = db.execute("SELECT t_done FROM requests WHERE rid = 4").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    import struct

    raw = struct.pack(">d", value)
    at = data.find(raw)
    assert at > 0
    data[at + 7] ^= 0x01  # the last bit of the double: a change of ~1e-16 s
    path.write_bytes(bytes(data))
    with open_recording(path) as got:
        rep = got.verify()
        assert not rep.ok and rep.bad == {"requests": 1} and "checksum" in rep.problems[0]
        assert rep.summary.startswith("1 of 30 requests rows fail their checks")


def test_no_file_is_left_beside_a_read_recording(originals: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "closed.db"
    shutil.copy(originals["closed"], path)
    _read_everything(path, tmp_path / "out", do_export=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["closed.db"]
    _ = os
