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
from rllmtop.record.reader import open_recording
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
    session.stop()  # stop sending; in-flight get 0.5 s, then are cancelled
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


# ------------------------------------------------------------------------------------ the stop policy


async def test_stop_is_gentle_first_then_forced(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path, speed=20)))
    session = build_session(sc, mode="headless", record=None)
    done = await _until_requests_finish(session, 2)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(done.wait(), 60)
    assert session.stopping == ""
    session.stop()
    assert session.stopping == "gentle"
    runner = session.runner
    assert runner is not None and runner.sending_done.is_set()
    session.stop()  # the second stop cancels what is in flight
    assert session.stopping == "forced"
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.INTERRUPTED and runner.in_flight == 0


async def test_stop_force_cancels_at_once(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path, speed=20)))
    session = build_session(sc, mode="headless", record=None)
    done = await _until_requests_finish(session, 1)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(done.wait(), 60)
    session.stop(force=True)
    assert session.stopping == "forced"
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.INTERRUPTED
    assert outcome.exit_code == 130


# ------------------------------------------------------------------------------------------- failures


async def test_a_failing_sink_fails_the_session_and_says_what_was_kept(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path, speed=20)))
    db = tmp_path / "sink.db"
    session = build_session(sc, mode="headless", record=db)
    done = await _until_requests_finish(session, 2)
    seen = 0

    def broken_view(rec: object) -> None:
        nonlocal seen
        if isinstance(rec, RequestEvent) and rec.kind is RequestKind.DONE:
            seen += 1
            if seen >= 2:
                raise ValueError("boom in the view")

    session.add_sink(broken_view)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(done.wait(), 60)
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.FAILED and outcome.exit_code == 2
    assert outcome.detail.startswith("broken_view failed on a RequestEvent record: boom in the view")
    rec = open_recording(db)
    assert rec.status is SessionState.FAILED and "boom in the view" in rec.metadata["status_detail"]


async def test_an_unexpected_error_ends_failed_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug or an unforeseen input after validation: the recording says failed, with the error."""
    from rllmtop.workload import runner as runner_mod

    async def explode(self: object) -> None:
        raise OSError("the dataset vanished under us")

    monkeypatch.setattr(runner_mod.Runner, "run", explode)
    sc = load_scenario(str(_scenario(tmp_path, speed=20)))
    db = tmp_path / "bug.db"
    session = build_session(sc, mode="headless", record=db)
    outcome = await asyncio.wait_for(session.run(), 60)
    assert outcome.state is SessionState.FAILED and outcome.exit_code == 2
    assert outcome.detail.startswith("internal error: OSError: the dataset vanished")
    rec = open_recording(db)
    assert rec.status is SessionState.FAILED
    assert session.engine is not None and session.engine.pgid is not None
    assert not group_alive(session.engine.pgid)


async def test_watching_without_load_ends_after_the_duration(outside_sim: str) -> None:
    from rllmtop.scenario import EngineSpec
    from rllmtop.session import Session, SessionPlan

    session = Session(
        SessionPlan(mode="attach", engine=EngineSpec(kind="url", url=outside_sim), duration=1.0)
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome = await asyncio.wait_for(session.run(), 30)
    assert outcome.state is SessionState.DONE
    assert 1.0 <= loop.time() - t0 < 15


async def test_a_wrong_api_key_is_reported_as_such(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop.sim", "serve", "--port", "0", "--api-key", "right-key-123"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = next(line.split(" on ", 1)[1].strip() for line in proc.stdout if " on http" in line)
        sc = load_scenario(str(_scenario(tmp_path, speed=20)), {"base_url": url})
        session = build_session(sc, mode="headless", record=None, api_key="wrong-key-456")
        outcome = await asyncio.wait_for(session.run(), 30)
        assert outcome.state is SessionState.FAILED
        assert "401" in outcome.detail and "wrong-key-456" not in outcome.detail
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------- max_model_len


def _long_classes(tmp_path: Path) -> Path:
    f = tmp_path / "long.toml"
    f.write_text(
        'name = "long"\nseed = 1\n[engine]\nkind = "sim"\nspeed = 20\nmax_model_len = 2048\n'
        '[arrival]\nprocess = "constant"\nrate = 20\n[load]\nnum_prompts = 4\n'
        '[[classes]]\nname = "short"\nprompts = "math-easy"\nmax_tokens = 512\n'
        '[[classes]]\nname = "long"\nprompts = "math-hard"\nmax_tokens = 4096\n'
    )
    return f


async def test_a_class_longer_than_the_engines_context_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "long.db"
    session = build_session(load_scenario(str(_long_classes(tmp_path))), mode="headless", record=db)
    outcome = await asyncio.wait_for(session.run(), 60)
    assert outcome.state is SessionState.FAILED
    assert "class 'long' asks max_tokens 4096" in outcome.detail and "max_model_len 2048" in outcome.detail
    assert outcome.requests == 0


async def test_clamping_max_tokens_is_a_warning_the_recording_keeps(tmp_path: Path) -> None:
    sc = load_scenario(str(_long_classes(tmp_path)))
    sc = dataclasses.replace(sc, load=dataclasses.replace(sc.load, clamp_max_tokens=True))
    db = tmp_path / "clamp.db"
    outcome = await asyncio.wait_for(build_session(sc, mode="headless", record=db).run(), 60)
    assert outcome.state is SessionState.DONE
    rec = open_recording(db)
    long = [r for r in rec.requests() if r.cls == "long"]
    assert long and all(r.max_tokens == 1536 for r in long)
    assert any("max_tokens 4096 clamped to 1536" in e.text for e in rec.logs())
