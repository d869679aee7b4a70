"""One schedule, many senders: the seeded plan of a run, built once, walked lazily, split by index.

A run's schedule is every request's send time, class, prompt and seed, decided by the scenario and its seed
alone. ``Schedule(scenario)`` holds none of it per request: :meth:`Schedule.chunks` draws the times
(``arrivals.schedule_chunks``) and the class/prompt picks (``PromptMix.draws``) a chunk at a time from the
same random streams, so they are identical to drawing them all at once, and a run of 10^9 requests costs
the same memory as a run of ten. An *arrival* is one entry of the schedule; request ``rid`` is its global
index, or, when a class of the scenario holds conversations, ``arrival x 64 + turn`` for every request
(``rllmtop.workload.conversation``). A trace with lengths (``traces.Trace``) is row-aligned with the
arrivals: arrival i replays row i.

Scale-out: ``schedule.part(k, n)`` is the share of sender ``k`` of ``n``: every request whose index
``i % n == k`` (arrival index), with its global rid and scheduled time; a conversation stays with the sender
of its arrival. Each sender walks the whole stream and keeps its share, so ``n`` senders send exactly the
requests one sender would, at the same times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rllmtop.scenario import Scenario
from rllmtop.workload.arrivals import CHUNK, schedule_chunks, schedule_count
from rllmtop.workload.conversation import STRIDE, has_conversations, turn_counts
from rllmtop.workload.prompts import PromptItem, PromptMix, load_scenario_prompts
from rllmtop.workload.traces import Trace, check_bounds, read_trace

__all__ = ["Schedule", "ScheduleChunk", "preflight", "request_seed"]


def request_seed(scenario_seed: int, rid: int) -> int:
    """The OpenAI ``seed`` sent with request ``rid``: stable across processes (splitmix64, 31 bits)."""
    z = ((scenario_seed & 0xFFFFFFFF) << 32 | (rid & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def preflight(scenario: Scenario) -> None:
    """Read and check the files the schedule needs (the classes' prompt sets; an arrival trace, and the
    part of it the run replays against the run limits), so that a bad file is one UserError naming the
    file, line and field before any engine starts (the trace is read once: the run reuses it).
    """
    items = load_scenario_prompts(scenario)
    if scenario.arrival.process == "trace":
        _ = Schedule(scenario, items).total


@dataclass(frozen=True, slots=True)
class ScheduleChunk:
    """Consecutive requests of a schedule (of one part: every n-th)."""

    rids: np.ndarray  # int64 rid of each arrival's (first) request, ascending
    times: np.ndarray  # float64 send times, seconds from the start of sending (session seconds), ascending
    classes: np.ndarray  # class index (into scenario.classes) of each
    items: list[PromptItem]  # the prompt of each
    arrivals: np.ndarray | None = None  # int64 arrival indices (None: the rids are the arrival indices)

    def __len__(self) -> int:
        return int(self.rids.size)


class Schedule:
    """The seeded schedule of ``scenario`` (see the module doc). ``len()`` is this part's arrival count,
    ``total`` the whole schedule's, ``planned`` this part's requests (every turn of every conversation).
    ``items``: the classes' prompt sets when already loaded. ``stride``: rid = arrival x stride + turn."""

    def __init__(
        self,
        scenario: Scenario,
        items: Sequence[Sequence[PromptItem]] | None = None,
        *,
        chunk: int = CHUNK,
    ) -> None:
        self.scenario = scenario
        self.items = list(items) if items is not None else load_scenario_prompts(scenario)
        self._mix = PromptMix(scenario.classes, self.items, scenario.seed)
        self.chunk = max(int(chunk), 1)
        self.index = 0  # this part's k ...
        self.parts = 1  # ... of n
        self.stride = STRIDE if has_conversations(scenario.classes) else 1
        self._total: int | None = None
        self._planned: int | None = None

    @property
    def total(self) -> int:
        """Requests in the whole schedule (one generating pass the first time, when not known up front)."""
        if self._total is None:
            sc = self.scenario
            self._total = schedule_count(sc.arrival, sc.load.num_prompts, sc.load.duration, sc.seed)
            if sc.arrival.process == "trace" and self.stride > 1:  # the loader bounds the other processes
                turns = max(
                    (c.conversation.turns_max or c.conversation.turns) if c.conversation else 1
                    for c in sc.classes
                )
                check_bounds(sc.arrival, self._total, 0.0, turns)
        return self._total

    @property
    def trace(self) -> Trace | None:
        """The trace with per-request lengths this schedule replays (None: no trace, or timestamps only);
        row i is arrival i."""
        a = self.scenario.arrival
        if a.process != "trace" or a.trace_format == "timestamps" or a.trace_file is None:
            return None
        return read_trace(a.trace_file, a.trace_format, a.trace_column)

    @property
    def planned(self) -> int:
        """Requests this part will send when none fails: arrivals, plus the later turns of conversations
        (a failed turn ends its conversation early)."""
        if self._planned is None:
            if self.stride == 1:
                self._planned = len(self)
            else:
                total, k, n, seed = self.total, self.index, self.parts, self.scenario.seed
                convs = [c.conversation for c in self.scenario.classes]
                count, base = 0, 0
                for cls in self._mix.class_draws(total, self.chunk):
                    arrivals = np.arange(base, base + cls.size, dtype=np.int64)
                    base += cls.size
                    if n != 1:
                        keep = arrivals % n == k
                        arrivals, cls = arrivals[keep], cls[keep]
                    count += int(arrivals.size)
                    for c, spec in enumerate(convs):
                        if spec is not None:
                            count += int(turn_counts(spec, seed, arrivals[cls == c]).sum()) - int(
                                np.count_nonzero(cls == c)
                            )
                self._planned = count
        return self._planned

    def rid(self, arrival: int, turn: int = 0) -> int:
        return arrival * self.stride + turn

    def __len__(self) -> int:
        return len(range(self.index, self.total, self.parts))

    def part(self, k: int, n: int) -> Schedule:
        """Sender ``k``'s share of ``n`` senders: requests ``k, k + n, k + 2n, ...`` (of the whole schedule;
        a part of a part is not a thing)."""
        if self.parts != 1:
            raise ValueError("part() of a schedule that is already a part")
        if not (isinstance(n, int) and n >= 1 and isinstance(k, int) and 0 <= k < n):
            raise ValueError(f"part({k!r}, {n!r}): need 0 <= k < n")
        other = Schedule.__new__(Schedule)
        other.scenario = self.scenario
        other.items = self.items
        other._mix = self._mix
        other.chunk = self.chunk
        other.index, other.parts = k, n
        other.stride = self.stride
        other._total = self._total
        other._planned = None
        return other

    def request_seed(self, rid: int) -> int:
        return request_seed(self.scenario.seed, rid)

    def chunks(self) -> Iterator[ScheduleChunk]:
        """This part's requests in order, a chunk at a time; every call starts over (same draws)."""
        sc = self.scenario
        total = self.total
        draws = self._mix.draws(total)
        k, n, stride = self.index, self.parts, self.stride
        base = 0
        for times in schedule_chunks(sc.arrival, sc.load.num_prompts, sc.load.duration, sc.seed, self.chunk):
            m = int(times.size)
            classes, items = draws.take(m)
            arrivals = np.arange(base, base + m, dtype=np.int64)
            base += m
            if n != 1:
                keep = np.flatnonzero(arrivals % n == k)
                if not keep.size:
                    continue
                arrivals, times, classes = arrivals[keep], times[keep], classes[keep]
                items = [items[i] for i in keep.tolist()]
            if stride == 1:
                yield ScheduleChunk(arrivals, times, classes, items)
            else:
                yield ScheduleChunk(arrivals * stride, times, classes, items, arrivals)
