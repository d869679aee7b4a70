"""Shared by the worker tests: scenarios against an outside simulator, sessions, process checks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rllmtop.commands import build_session
from rllmtop.events import Record, RequestEvent, RequestKind, WorkerEvent
from rllmtop.scenario import EngineSpec, Scenario, load_scenario
from rllmtop.session import Session

SCENARIO = """
name = "workers"
seed = {seed}
[arrival]
process = "{process}"
rate = {rate}
{burst}
[load]
num_prompts = {n}
request_seed = true
grace_period = {grace}
[[classes]]
name = "m"
prompts = "{prompts}"
max_tokens = {max_tokens}
"""


def scenario(
    tmp_path: Path,
    *,
    n: int = 60,
    rate: float = 40.0,
    process: str = "poisson",
    prompts: str = "math-easy",
    max_tokens: int = 512,
    seed: int = 7,
    grace: float = 30.0,
    **load: Any,
) -> Scenario:
    f = tmp_path / f"w{seed}-{n}-{len(list(tmp_path.iterdir()))}.toml"
    burst = "burstiness = 0.5" if process == "gamma" else ""
    f.write_text(
        SCENARIO.format(
            seed=seed,
            process=process,
            rate=rate,
            burst=burst,
            n=n,
            grace=grace,
            prompts=prompts,
            max_tokens=max_tokens,
        )
    )
    sc = load_scenario(str(f))
    return dataclasses.replace(sc, load=dataclasses.replace(sc.load, **load)) if load else sc


def session(sc: Scenario, url: str, db: Path | None) -> Session:
    return build_session(sc, mode="headless", engine=EngineSpec(kind="url", url=url), record=db)


class Watch:
    """A sink: every record, plus events to await (a worker started; N requests of a worker sent)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._waits: list[tuple[Callable[[Record], bool], asyncio.Event]] = []

    def __call__(self, rec: Record) -> None:
        self.records.append(rec)
        for cond, ev in self._waits:
            if not ev.is_set() and cond(rec):
                ev.set()

    def when(self, cond: Callable[[Record], bool]) -> asyncio.Event:
        ev = asyncio.Event()
        self._waits.append((cond, ev))
        return ev

    def sent_by(self, worker: int, n: int) -> asyncio.Event:
        count = 0

        def cond(rec: Record) -> bool:
            nonlocal count
            if isinstance(rec, RequestEvent) and rec.kind is RequestKind.SENT and rec.worker == worker:
                count += 1
            return count >= n

        return self.when(cond)

    def worker_events(self) -> list[WorkerEvent]:
        return [r for r in self.records if isinstance(r, WorkerEvent)]

    def pid_of(self, worker: int) -> int:
        for r in self.worker_events():
            if r.worker == worker and r.state == "started" and r.pid is not None:
                return r.pid
        raise AssertionError(f"worker {worker} never started")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a reaper that is slow)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """PIDs still alive after ``timeout`` seconds (polling /proc: the processes are not our children)."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out
