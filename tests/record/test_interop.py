"""Recordings are plain SQLite: the tools people already use open them as they are."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rllmtop.record.reader import open_recording

SAMPLE = Path(__file__).resolve().parents[2] / "recordings" / "sample.db"


def test_the_sample_recording_opens_and_replays_its_summary() -> None:
    """The committed sample is schema version 1 as written by this version: it must keep opening."""
    rec = open_recording(SAMPLE)
    assert rec.info.scenario_name == "stragglers"
    reqs = rec.requests()
    assert len(reqs) == 128
    assert rec.samples(names=["kv_cache_usage"])
    assert rec.status.value == "done"


def test_sqlite_utils_reads_a_recording() -> None:
    sqlite_utils = pytest.importorskip("sqlite_utils")
    db = sqlite_utils.Database(sqlite3.connect(f"file:{SAMPLE}?mode=ro", uri=True))
    tables = set(db.table_names())
    assert {"metadata", "requests", "samples", "scrapes", "series", "events"} <= tables
    assert db["requests"].count == 128
    meta = {r["key"]: r["value"] for r in db["metadata"].rows}
    assert meta["app"] == "rllmtop" and meta["status"] == "done"
    rows = list(db.query("select metric, count(*) as n from sample_values group by metric order by metric"))
    assert any(r["metric"] == "kv_cache_usage" and r["n"] > 10 for r in rows)
