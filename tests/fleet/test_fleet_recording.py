"""A fleet session's recording, and the commands over it: `rllmtop attach URL URL ...` and
`rllmtop run fleet` for a new user, replay showing the fleet table, export's engine column, report and
compare on fleet recordings."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rllmtop.commands import build_session
from rllmtop.events import SessionState
from rllmtop.record.export import export_recording
from rllmtop.record.reader import open_recording
from rllmtop.record.replay import ReplaySource
from rllmtop.scenario import load_scenario
from rllmtop.view import LiveView
from tests.fleet.fleet_procs import sims

pytestmark = pytest.mark.timeout(120)


def rllmtop(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rllmtop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )


@pytest.fixture(scope="module")
def fleet_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording of a load over two simulated replicas (round_robin)."""
    d = tmp_path_factory.mktemp("fleetrec")
    f = d / "two.toml"
    f.write_text(
        'name = "two-replicas"\nseed = 3\n[engine]\nkind = "sim"\nspeed = 20\nreplicas = 2\n'
        'balance = "round_robin"\n[arrival]\nprocess = "constant"\nrate = 8\n[load]\nnum_prompts = 8\n'
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 512\n'
    )
    db = d / "two.db"
    outcome = asyncio.run(build_session(load_scenario(str(f)), mode="headless", record=db).run())
    assert outcome.state is SessionState.DONE, outcome.detail
    return db


def test_the_recording_holds_each_engine_and_where_the_load_went(fleet_db: Path) -> None:
    rec = open_recording(fleet_db)
    ids = [e.id for e in rec.info.engines]
    assert len(ids) == 2 and rec.info.load_url == ""  # balanced client-side: no single load URL
    assert ("balance", "round_robin") in rec.info.extra
    assert {s.engine_id for s in rec.scrapes()} == set(ids)
    assert len(rec.requests()) == 8
    # requests name the engine that served them once the sender balances (the workload side records it)
    assert {r.engine for r in rec.requests()} <= {"", *ids}


async def test_replay_shows_the_fleet_table(fleet_db: Path) -> None:
    src = ReplaySource(open_recording(fleet_db), speed=64, exit_at_end=True)
    view = LiveView(summary_interval=0)
    src.seek(src.duration)
    await asyncio.wait_for(src.run(view.handle, asyncio.Event()), 30)
    snap = view.snapshot(src.duration)
    ids = [e.id for e in open_recording(fleet_db).info.engines]
    assert [e.id for e in snap.engines] == ids
    assert all(e.kind == "sim" and e.version for e in snap.engines)


def test_export_has_the_engine_column(fleet_db: Path, tmp_path: Path) -> None:
    files = {p.name: p for p in export_recording(fleet_db, "csv", tmp_path / "x")}
    ids = {e.id for e in open_recording(fleet_db).info.engines}
    with files["samples.csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["engine"] for r in rows} == ids
    with files["engines.csv"].open() as f:
        assert {r["id"] for r in csv.DictReader(f)} == ids
    with files["requests.csv"].open() as f:
        assert "engine" in (csv.DictReader(f).fieldnames or [])


def test_report_and_compare_run_on_fleet_recordings(fleet_db: Path, tmp_path: Path) -> None:
    p = rllmtop("report", str(fleet_db), "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / "index.html").exists()
    p = rllmtop("compare", str(fleet_db), str(fleet_db), "--out", str(tmp_path / "c"))
    assert p.returncode == 0, p.stderr


def test_attach_several_urls_headless_for_a_duration(tmp_path: Path) -> None:
    with sims(2, "--speed", "20") as started:
        (_, a), (_, b) = started
        db = tmp_path / "attach.db"
        p = rllmtop("attach", a, b, "--headless", "--duration", "2", "--record", str(db))
        assert p.returncode == 0, p.stderr
        assert "rllmtop: done" in p.stdout
        rec = open_recording(db)
        assert [e.id for e in rec.info.engines] == [a, b] and rec.status is SessionState.DONE
        assert 2 <= rec.duration < 10
        # a load over two engines needs a target: one message, nothing recorded
        sc = tmp_path / "s.toml"
        sc.write_text('name = "s"\n[load]\nnum_prompts = 2\n[[classes]]\nname = "e"\nprompts = "math-easy"\n')
        p = rllmtop("attach", a, b, "--scenario", str(sc), "--headless", "--record", str(tmp_path / "n.db"))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert "nowhere to send" in p.stderr and "--load-url" in p.stderr
        assert not (tmp_path / "n.db").exists()


def test_run_fleet_works_for_a_new_user(tmp_path: Path) -> None:
    """The shipped scenario: four simulated replicas, round_robin; a time-lapse, sending for 300 simulated
    seconds."""
    db = tmp_path / "fleet.db"
    p = rllmtop("run", "fleet", "--headless", "--speed", "50", "--duration", "300", "--record", str(db))
    assert p.returncode == 0, p.stderr
    rec = open_recording(db)
    assert len(rec.info.engines) == 4 and all(e.launched for e in rec.info.engines)
    assert {s.engine_id for s in rec.scrapes() if s.ok} == {e.id for e in rec.info.engines}
    assert rec.requests() and rec.status is SessionState.DONE
