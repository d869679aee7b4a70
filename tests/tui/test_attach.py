"""`rllmtop attach URL` in the TUI, against a simulator started outside rllmtop (its own process): the
monitor fills from the engine's /metrics alone, and with a scenario it also drives load; quitting ends it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import until

from rllmtop.commands import build_session
from rllmtop.events import SessionState
from rllmtop.record.reader import open_recording
from rllmtop.scenario import EngineSpec, load_scenario
from rllmtop.tui.app import build_app

pytestmark = pytest.mark.timeout(120)


async def test_attach_without_load_monitors_the_engine(outside_sim: str, tmp_path: Path) -> None:
    session = build_session(
        None, mode="attach", engine=EngineSpec(kind="url", url=outside_sim), record=tmp_path / "watch.db"
    )
    app = build_app(session)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.kv.t.size >= 3,
            timeout=30,
            what="KV samples from the outside engine",
        )
        snap = app.snapshot
        assert snap is not None and snap.info is not None
        assert snap.info.engine_kind == "sim" and snap.info.engine_url == outside_sim
        assert "kv_cache_usage" not in snap.missing
        assert snap.progress.sent == 0  # no load without a scenario
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, timeout=30, what="the app to exit")
    assert app.return_value is not None and app.return_value.state is SessionState.INTERRUPTED
    assert open_recording(tmp_path / "watch.db").status is SessionState.INTERRUPTED


async def test_attach_with_a_scenario_sends_load(outside_sim: str, tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        'name = "attach-load"\nseed = 1\n[arrival]\nprocess = "constant"\nrate = 20\n'
        '[load]\nnum_prompts = 12\n[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 1024\n'
    )
    session = build_session(
        load_scenario(str(f)),
        mode="attach",
        engine=EngineSpec(kind="url", url=outside_sim),
        record=tmp_path / "load.db",
    )
    app = build_app(session)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, app.ended.is_set, timeout=60, what="the attached run to finish")
        snap = app.snapshot
        assert snap is not None and snap.state is SessionState.DONE
        assert snap.progress.done == 12 and snap.asu is not None
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, timeout=30, what="the app to exit")
    rec = open_recording(tmp_path / "load.db")
    assert rec.status is SessionState.DONE and len(rec.requests()) == 12
