"""Snapshot tests: a small recording replayed into the monitor, paused at a fixed position, at 80x24 and
160x48; and a fleet of two engines at 80x24 (a scripted stream, stopped at a fixed time). Update after an
intended visual change with ``pytest tests/tui/test_snapshots.py --snapshot-update`` and look at the SVGs
(``tests/tui/__snapshots__``) before committing them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_fakes import ScriptedSession, fleet_script, write_recording

from rllmtop.session import Session, SessionPlan
from rllmtop.tui.app import RllmtopApp, build_app
from rllmtop.view import LiveView


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "demo.db"
    write_recording(str(path))
    return path


def replay_app(path: Path) -> RllmtopApp:
    session = Session(SessionPlan(mode="replay", replay_path=path))
    return build_app(session, view=LiveView(summary_interval=0))  # summary inline: deterministic


def at(position: float, *keys: str):  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        app: RllmtopApp = pilot.app
        replay = app.replay
        assert replay is not None
        replay.pause()
        replay.seek(position)
        await pilot.pause()
        await replay.settled()  # type: ignore[attr-defined]
        for key in keys:
            await pilot.press(key)
        app._tick()
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_replay_snapshot(snap_compare, recording: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(replay_app(recording), terminal_size=size, run_before=at(24.0))


def test_replay_snapshot_analysis_page(snap_compare, recording: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(replay_app(recording), terminal_size=(80, 24), run_before=at(24.0, "2"))


def test_fleet_snapshot_two_engines(snap_compare) -> None:  # type: ignore[no-untyped-def]
    session = ScriptedSession(fleet_script(2, 20.0))
    app = build_app(session, view=LiveView(summary_interval=0))

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        session.advance(12.0)
        app._tick()
        await pilot.pause()
        app._tick()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
