"""The shipped scenarios as workloads: every one passes the preflight (its prompt sets and trace read and
checked) with a schedule within the limits; the workload ones have the shape their comments state; and (slow)
each of those runs briefly headless on the simulator, recorded, with the facts it exists to show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rllmtop.record.reader import open_recording
from rllmtop.scenario import MAX_REQUESTS, list_scenarios, load_scenario, matrix_cells
from rllmtop.workload.conversation import STRIDE
from rllmtop.workload.schedule import Schedule, preflight

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
WORKLOADS = ("chat-multiturn", "effort-matrix", "ramp-up", "trace-azure", "trace-burstgpt", "trace-mooncake")


def test_every_shipped_scenario_passes_the_preflight() -> None:
    names = [n for n, _ in list_scenarios()]
    assert set(WORKLOADS) <= set(names)
    for name in names:
        sc = load_scenario(name)
        for _cell, cell in matrix_cells(sc) if sc.matrix else [(None, sc)]:
            preflight(cell)
            sched = Schedule(cell)
            assert 0 < sched.planned <= MAX_REQUESTS, name


def test_workload_scenarios_have_their_stated_shape() -> None:
    bg = Schedule(load_scenario("trace-burstgpt"))
    assert bg.total == 287 and bg.trace is not None and bg.trace.skipped == 13  # as its comment says
    mc = Schedule(load_scenario("trace-mooncake")).trace
    assert mc is not None and mc.hash_offsets is not None
    az = load_scenario("trace-azure")
    assert (az.arrival.trace_format, az.arrival.time_scale) == ("azure", 0.5)
    ramp = load_scenario("ramp-up").arrival
    assert (ramp.ramp_up_strategy, ramp.ramp_up_start_rate, ramp.ramp_up_end_rate) == ("linear", 1.0, 16.0)
    chat = load_scenario("chat-multiturn")
    conv = chat.classes[0].conversation
    assert conv is not None and (conv.turns, conv.turns_max, conv.think_time) == (2, 5, 4.0)
    s = Schedule(chat)
    assert s.stride == STRIDE and 2 * 40 <= s.planned <= 5 * 40
    cells = matrix_cells(load_scenario("effort-matrix"))
    assert [{c.reasoning_effort for c in cell.classes} for _, cell in cells] == [{"low"}, {"high"}]


def _run(name: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rllmtop", "run", name, "--headless", "--speed", "20", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=out)


@pytest.mark.slow
@pytest.mark.parametrize("name", [w for w in WORKLOADS if w != "effort-matrix"])
def test_workload_runs_headless_on_the_simulator(tmp_path: Path, name: str) -> None:
    db = tmp_path / f"{name}.db"
    # the ramp is spread over num_prompts requests: fewer of them make a shorter ramp, not a cut one
    cut = ("--num-prompts", "100") if name == "ramp-up" else ("--duration", "20")
    p = _run(name, tmp_path, *cut, "--record", str(db))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and f"rllmtop: done | {name}" in p.stdout
    recs = list(open_recording(db).iter_requests())
    ok = [r for r in recs if r.status.value == "ok"]
    assert ok, p.stdout
    if name.startswith("trace-"):
        sc = load_scenario(name)
        tr = Schedule(sc).trace
        assert tr is not None and tr.input_tokens is not None and tr.output_tokens is not None
        for r in ok:  # each request carries its row's lengths (single-turn: rid = row)
            assert r.target_input_tokens == int(tr.input_tokens[r.rid])
            assert r.max_tokens == min(int(tr.output_tokens[r.rid]), sc.classes[0].max_tokens)
            assert r.completion_tokens == r.max_tokens, "ignore_eos: the row's output length in full"
            assert (
                r.prompt_tokens is not None
                and abs(r.prompt_tokens - r.target_input_tokens) <= 0.05 * r.target_input_tokens + 40
            )
    if name == "chat-multiturn":
        assert any(r.turn > 0 for r in ok) and all(r.conversation == r.rid // STRIDE for r in recs)
    if name == "ramp-up":
        t = np.sort([r.t_scheduled for r in recs])
        gaps = np.diff(t)
        assert t.size == 100 and np.median(gaps[:25]) > 2 * np.median(gaps[-25:]), "1 -> 16 req/s"


@pytest.mark.slow
def test_effort_matrix_runs_and_low_effort_reasons_less(tmp_path: Path) -> None:
    p = _run("effort-matrix", tmp_path, "--matrix", "--num-prompts", "60", "--record", str(tmp_path / "m"))
    assert p.returncode == 0, p.stdout + p.stderr
    dbs = sorted((tmp_path / "m").glob("*.db"))
    assert len(dbs) == 2, dbs
    reasoning = {}
    for db in dbs:
        recs = [r for r in open_recording(db).iter_requests() if r.status.value == "ok"]
        assert recs
        reasoning["low" if "low" in db.name else "high"] = float(
            np.median([r.reasoning_tokens for r in recs])
        )
    assert reasoning["low"] < 0.6 * reasoning["high"], reasoning
