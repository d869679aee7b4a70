"""The session's lifecycle against the real simulator subprocess: whatever ends a run, the engine is torn
down and the recording is closed with the right status."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from rllmtop.commands import build_session
from rllmtop.engines.launcher import group_alive
from rllmtop.events import RequestEvent, RequestKind, SessionState
from rllmtop.record.store import open_recording
from rllmtop.scenario import load_scenario


def _scenario(tmp_path: Path, duration: float = 600, speed: float = 5, faults: str = "") -> Path:
    f = tmp_path / "s.toml"
    f.write_text(
        f'name = "lifecycle"\nseed = 2\n[engine]\nkind = "sim"\nspeed = {speed}\n{faults}\n'
        f'[arrival]\nprocess = "gamma"\nrate = 20\nburstiness = 0.5\n[load]\nduration = {duration}\n'
        '[[classes]]\nname = "m"\nprompts = "math-medium"\nmax_tokens = 2048\n'
    )
    return f


async def _until_requests_finish(session, n: int) -> None:  # type: ignore[no-untyped-def]
    done = asyncio.Event()
    count = 0

    def sink(rec: object) -> None:
        nonlocal count
        if isinstance(rec, RequestEvent) and rec.kind is RequestKind.DONE:
            count += 1
            if count >= n:
                done.set()

    session.add_sink(sink)
    return done  # type: ignore[return-value]


async def test_a_forced_cancel_still_tears_down_and_records(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path)))
    db = tmp_path / "cancel.db"
    session = build_session(sc, mode="headless", record=db)
    done = await _until_requests_finish(session, 3)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(done.wait(), 60)
    engine = session.engine
    assert engine is not None and engine.pgid is not None
    task.cancel()  # no graceful stop: the task itself is cancelled (a forced quit)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.outcome is not None and session.outcome.state is SessionState.INTERRUPTED
    assert not group_alive(engine.pgid)
    rec = open_recording(db)
    assert rec.status is SessionState.INTERRUPTED  # closed, not left incomplete
    assert len(rec.requests()) >= 3


async def test_graceful_stop_drains_then_ends_interrupted(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path)))
    sc = dataclasses.replace(sc, load=dataclasses.replace(sc.load, grace_period=0.5))
    db = tmp_path / "stop.db"
    session = build_session(sc, mode="headless", record=db)
    done = await _until_requests_finish(session, 2)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(done.wait(), 60)
    session.request_stop()  # stop sending; in-flight get 0.5 s, then are cancelled
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.INTERRUPTED and outcome.exit_code == 130
    reqs = open_recording(db).requests()
    assert {r.status.value for r in reqs} <= {"ok", "cancelled", "error"}
    assert any(r.status.value == "cancelled" for r in reqs)
    assert open_recording(db).status is SessionState.INTERRUPTED


async def test_engine_dying_mid_run_ends_as_engine_died(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path, faults="faults = { exit_after = 3 }")))
    db = tmp_path / "died.db"
    session = build_session(sc, mode="headless", record=db)
    outcome = await asyncio.wait_for(session.run(), 120)
    assert outcome.state is SessionState.ENGINE_DIED and outcome.exit_code == 3
    assert "exited with code 1" in outcome.detail
    rec = open_recording(db)
    assert rec.status is SessionState.ENGINE_DIED
    assert "exited with code 1" in rec.status_detail
    # in-flight requests ended (failed or cancelled), none left dangling
    assert rec.requests() and all(r.status.value in ("ok", "error", "cancelled") for r in rec.requests())


async def test_the_recording_ends_with_the_engines_final_counters(tmp_path: Path) -> None:
    """A last scrape is taken after the load drained: the recorded counters cover every token served,
    even when regular polls are far apart (here one every 30 s)."""
    f = tmp_path / "s.toml"
    f.write_text(
        'name = "final"\nseed = 4\nscrape_interval = 30\n[engine]\nkind = "sim"\nspeed = 50\n'
        '[arrival]\nprocess = "constant"\nrate = 50\n[load]\nnum_prompts = 10\n'
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 1024\n'
    )
    db = tmp_path / "final.db"
    outcome = await asyncio.wait_for(
        build_session(load_scenario(str(f)), mode="headless", record=db).run(), 60
    )
    assert outcome.state is SessionState.DONE
    rec = open_recording(db)
    served = sum(r.completion_tokens or 0 for r in rec.requests())
    gen = rec.samples(names=["generation_tokens_total"])
    assert len(gen) >= 2  # the first poll and the final one
    assert gen[-1].value == served > 0
