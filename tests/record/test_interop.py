"""Recordings are plain SQLite: the tools people already use open them as they are."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rllmtop.record.reader import open_recording

SAMPLE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "recordings" / "stragglers-schema1.db"
)  # rllmtop 0.1


def test_the_v1_recording_opens_and_replays_its_summary() -> None:
    """A recording of rllmtop 0.1 (schema version 1, the sample it shipped): it must keep opening."""
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


def test_the_v1_sample_replays_and_verifies() -> None:
    import asyncio

    from rllmtop.events import RequestEvent, RequestKind, Scrape
    from rllmtop.record.replay import ReplaySource

    with open_recording(SAMPLE) as rec:
        assert rec.schema_version == 1 and rec.info.engines == () and rec.client_health() == []
        assert rec.info.provenance is not None  # from the legacy header, read in one place
        report = rec.verify()
        assert report.ok and not report.checksums and "checksums are unavailable" in report.summary
        stream = list(rec.stream())
        done = [e for e in stream if isinstance(e, RequestEvent) and e.kind is RequestKind.DONE]
        assert len({e.rid for e in done}) == len([r for r in rec.requests() if r.status.value == "ok"])
        assert sum(isinstance(e, Scrape) for e in stream) == len(rec.scrapes()) == 125
        assert {s.engine_id for s in rec.scrapes()} == {""} and rec.samples(engine="") == rec.samples()

        async def replay() -> list[object]:
            got: list[object] = []
            src = ReplaySource(rec)
            src.pause()
            stop = asyncio.Event()
            task = asyncio.create_task(src.run(got.append, stop))
            src.seek(src.duration)
            await asyncio.wait_for(src.settled(), 30)
            stop.set()
            await asyncio.wait_for(task, 10)
            return got

        assert asyncio.run(replay())[1:] == stream


NEW_SAMPLE = Path(__file__).resolve().parents[2] / "recordings" / "sample.db"


def test_the_shipped_sample_is_a_whole_schema_2_recording_of_the_stragglers_scenario() -> None:
    """recordings/sample.db (the README's command made it) opens, verifies with checksums and replays."""
    with open_recording(NEW_SAMPLE) as rec:
        assert rec.schema_version == 2 and rec.info.scenario_name == "stragglers"
        assert rec.status.value == "done" and len(rec.requests()) == 128
        assert rec.info.clock == "simulated" and rec.info.speed == 5
        assert rec.client_health() and rec.info.provenance is not None
        report = rec.verify()
        assert report.ok and report.checksums, report.summary
