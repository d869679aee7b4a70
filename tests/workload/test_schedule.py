"""One schedule, many senders (prepares issue 14) and bounded memory for any length (issue 11.1/11.8).

The lazy chunked schedule must be identical, bit for bit, to drawing every time and every pick at once
(the implementation before this change, kept in ``reference_schedule``); parts of n senders must add up to
the whole with global rids and times; and a run of 10^9 requests must not allocate the 7.45 GiB it did.
"""

from __future__ import annotations

import dataclasses
import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import ArrivalSpec, PhaseSpec, load_scenario
from rllmtop.workload.arrivals import schedule, schedule_chunks, schedule_count
from rllmtop.workload.prompts import PromptMix, load_scenario_prompts
from rllmtop.workload.schedule import Schedule, request_seed

from .reference_schedule import schedule as old_schedule

SPECS: list[tuple[ArrivalSpec, int | None, float | None]] = [
    (ArrivalSpec(process="gamma", rate=50.0, burstiness=0.25), 3000, None),
    (ArrivalSpec(process="gamma", rate=50.0, burstiness=0.25), None, 40.0),
    (ArrivalSpec(process="gamma", rate=50.0, burstiness=2.0), 500, 7.0),
    (ArrivalSpec(process="poisson", rate=5.0), None, 300.0),
    (ArrivalSpec(process="poisson", rate=5.0), 400, None),
    (ArrivalSpec(process="constant", rate=7.0), None, 100.0),
    (ArrivalSpec(process="constant", rate=7.0), 333, 20.0),
    (ArrivalSpec(process="gamma", rate=float("inf")), 1000, None),
    (ArrivalSpec(process="gamma", rate=10.0, burstiness=0.5, rescale=True), 700, None),
    (ArrivalSpec(process="gamma", rate=10.0, burstiness=0.5, rescale=True), 700, 30.0),
    (ArrivalSpec(process="burst", burst_size=16), None, None),
    (ArrivalSpec(process="burst", burst_size=5, burst_interval=1.5), 101, None),
    (ArrivalSpec(process="burst", burst_size=5, burst_interval=1.5), None, 40.0),
    (
        ArrivalSpec(
            process="phases",
            phases=(PhaseSpec(10.0, 30.0, 0.5), PhaseSpec(5.0, 0.0), PhaseSpec(10.0, 8.0, 1.0, "poisson")),
        ),
        None,
        None,
    ),
    (
        ArrivalSpec(
            process="phases",
            phases=(PhaseSpec(1.0, 20.0, process="constant"), PhaseSpec(1.0, 3.0)),
            repeat_phases=True,
        ),
        450,
        None,
    ),
    (
        ArrivalSpec(process="phases", phases=(PhaseSpec(2.0, 40.0),), repeat_phases=True),
        None,
        33.0,
    ),
]


@pytest.mark.parametrize(("spec", "n", "duration"), SPECS)
@pytest.mark.parametrize("seed", [0, 11])
def test_chunked_times_are_identical_to_whole_array_draws(
    spec: ArrivalSpec, n: int | None, duration: float | None, seed: int
) -> None:
    ref = old_schedule(spec, n, duration, seed)
    for chunk in (1, 7, 4096, 1 << 20):
        parts = list(schedule_chunks(spec, n, duration, seed, chunk))
        assert all(0 < p.size <= chunk for p in parts)
        got = np.concatenate(parts) if parts else np.empty(0)
        np.testing.assert_array_equal(got, ref)  # bit for bit, not approximately
    np.testing.assert_array_equal(schedule(spec, n, duration, seed), ref)
    assert schedule_count(spec, n, duration, seed) == ref.size


def _scenario(tmp_path: Path, arrival: str, load: str) -> object:
    p = tmp_path / "s.toml"
    p.write_text(
        f"seed = 21\n[arrival]\n{arrival}\n[load]\n{load}\n"
        '[[classes]]\nname = "e"\nprompts = { builtin = "math-easy", limit = 7 }\nweight = 2\n'
        '[[classes]]\nname = "q"\nprompts = { builtin = "mcq", limit = 5 }\nweight = 1\n'
        '[[classes]]\nname = "h"\nprompts = { builtin = "math-hard", limit = 3 }\nweight = 0.5\n'
    )
    return load_scenario(str(p))


@pytest.mark.parametrize(
    ("arrival", "load"),
    [
        ('process = "gamma"\nrate = 80\nburstiness = 0.5', "num_prompts = 5000"),
        ('process = "poisson"\nrate = 30', "duration = 60"),
        ('process = "burst"\nburst_size = 40', ""),
    ],
)
def test_schedule_is_the_old_times_and_picks(tmp_path: Path, arrival: str, load: str) -> None:
    sc = _scenario(tmp_path, arrival, load)
    times = old_schedule(sc.arrival, sc.load.num_prompts, sc.load.duration, sc.seed)  # type: ignore[attr-defined]
    picks = PromptMix(sc.classes, load_scenario_prompts(sc), sc.seed).draw(times.size)  # type: ignore[arg-type,attr-defined]
    for chunk in (3, 1000, 65536):
        s = Schedule(sc, chunk=chunk)  # type: ignore[arg-type]
        assert len(s) == s.total == times.size
        got = list(s.chunks())
        rids = np.concatenate([c.rids for c in got])
        np.testing.assert_array_equal(rids, np.arange(times.size))
        np.testing.assert_array_equal(np.concatenate([c.times for c in got]), times)
        flat = [(int(c), it) for ch in got for c, it in zip(ch.classes.tolist(), ch.items, strict=True)]
        assert flat == picks
        assert next(iter(s.chunks())).items == got[0].items  # every walk starts over, same draws


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_parts_of_n_senders_are_the_whole_schedule(tmp_path: Path, n: int) -> None:
    sc = _scenario(tmp_path, 'process = "gamma"\nrate = 80\nburstiness = 0.5', "num_prompts = 1001")
    whole = Schedule(sc, chunk=64)  # type: ignore[arg-type]
    ref = {
        int(r): (float(t), int(c), it.id)
        for ch in whole.chunks()
        for r, t, c, it in zip(ch.rids, ch.times, ch.classes, ch.items, strict=True)
    }
    seen: dict[int, tuple[float, int, str]] = {}
    for k in range(n):
        part = whole.part(k, n)
        got = [
            (int(r), (float(t), int(c), it.id))
            for ch in part.chunks()
            for r, t, c, it in zip(ch.rids, ch.times, ch.classes, ch.items, strict=True)
        ]
        assert len(got) == len(part) == len(range(k, 1001, n))
        assert all(r % n == k for r, _ in got)
        assert [r for r, _ in got] == sorted(r for r, _ in got)
        for r, v in got:
            assert r not in seen
            seen[r] = v
    assert seen == ref  # same requests, same global rids, same scheduled times, same prompts
    with pytest.raises(ValueError):
        whole.part(3, 3)
    with pytest.raises(ValueError):
        whole.part(0, 2).part(0, 2)
    assert whole.request_seed(5) == request_seed(21, 5)


def test_a_billion_requests_at_rate_inf_cost_no_memory(tmp_path: Path) -> None:
    """Issue 11.1: num_prompts = 1e9 with rate = inf allocated 7.45 GiB (the times array). The loader now
    refuses it (MAX_REQUESTS); the schedule itself stays lazy for a scenario built in code."""
    with pytest.raises(UserError, match="num_prompts = 1000000000: out of range"):
        _scenario(tmp_path, 'process = "gamma"\nrate = inf', "num_prompts = 1000000000")
    sc = _scenario(tmp_path, 'process = "gamma"\nrate = inf', "num_prompts = 10")
    sc = dataclasses.replace(sc, load=dataclasses.replace(sc.load, num_prompts=10**9))  # type: ignore[type-var]
    tracemalloc.start()
    try:
        s = Schedule(sc)  # type: ignore[arg-type]
        assert len(s) == 10**9  # known without a pass
        it = s.chunks()
        first = list(itertools.islice(it, 3))
        assert [len(c) for c in first] == [65536] * 3 and not any(c.times.any() for c in first)
        assert first[2].rids[0] == 2 * 65536
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_duration_schedules_are_walked_in_bounded_memory() -> None:
    """A long run (50 req/s for 24 h = 4.3 M requests) is generated chunk by chunk, never whole."""
    spec = ArrivalSpec(process="gamma", rate=50.0, burstiness=0.5)
    tracemalloc.start()
    try:
        n = 0
        last = -1.0
        for t in schedule_chunks(spec, None, 6 * 3600.0, 1):
            assert t[0] >= last
            last = float(t[-1])
            n += t.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(n - 50 * 6 * 3600) < 5000
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for {n} requests"
