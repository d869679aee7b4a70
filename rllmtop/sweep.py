"""Sweeps: one scenario at rising load, each level a full recorded run, and the highest level that meets
the SLOs.

``rllmtop sweep SCENARIO`` runs the scenario once per load level, each level its own headless session
(launching its own engine or simulator, like a cell of a matrix: :mod:`rllmtop.matrix`), recorded to
``DIR/level-NN-<axis>-<value>.db`` in one directory (``--out DIR``, default
``recordings/sweep-<scenario>-<UTC>/``). Levels come from a grid (``--rates 1,2,4,8``, ``--concurrencies
8,16,32``) or a search (``--search max-rate|max-concurrency --slo ttfvt_p99=30``):

- the search starts at ``--start`` (the scenario's rate, else 1 req/s; concurrency 1) and *brackets* by
  doubling while levels meet the SLOs (halving while they miss), then *bisects* between the highest level
  that met them and the lowest that missed, until the two are within ``--tolerance`` of the former (a
  fraction; concurrencies: within 1), at most ``--max-levels`` levels in all;
- a concurrency level caps the client at that many requests in flight; when the scenario counts its
  requests (``load.num_prompts``) they are all due at once (rate inf, a closed loop, as ``vllm bench
  serve`` runs a concurrency), else the scenario's own arrivals are kept under the cap;
- a level meets the SLOs when its session ended done, it was not stopped early, and every run-level SLO
  (the scenario's ``[slo]`` and ``--slo``) holds on its recording; goodput is judged on the per-request
  SLOs (``--goodput``, else the scenario's, else those the latency SLOs imply: ``ttfvt_p99 = 30`` ->
  ``ttfvt: 30``);
- a level stops early when the engine is over-saturated (:class:`rllmtop.metrics.analysis.SaturationRule`,
  judged live on the session's records by :class:`SaturationStop`): the stop and its reason are in the
  recording (a warning in its log and its status detail) and in ``sweep.json``.

After every level ``sweep.json`` is rewritten (:mod:`rllmtop.record.sweep`: every number read back from
the level's recording), so a crash keeps the levels done. At the end the answer is printed in one line
(:attr:`rllmtop.record.sweep.Answer.line`), the table of levels, and the sweep report is written to
``DIR/report/`` (:func:`rllmtop.record.sweep.build_sweep_report`).
"""

from __future__ import annotations

import asyncio
import io
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rllmtop.errors import UserError
from rllmtop.events import LogEvent, Record, Scrape, SessionState, StateEvent
from rllmtop.fmt import safe_name
from rllmtop.metrics.analysis import (
    KNEE_RULE,
    SaturationMonitor,
    SaturationRule,
    SaturationVerdict,
    goodput_from_slo,
)
from rllmtop.record.sweep import (
    SCHEMA,
    SweepLevel,
    knee_of,
    level_entry,
    missed_text,
    sweep_answer,
    sweep_table,
    write_sweep,
)
from rllmtop.scenario import Scenario
from rllmtop.scenario.matrix import base_name

__all__ = [
    "SaturationStop",
    "SweepSpec",
    "next_level",
    "parse_levels",
    "run_sweep",
]

AXES = ("rate", "concurrency")
_RATED = ("gamma", "poisson", "constant")
MAX_LEVELS = 64


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep. ``grid`` non-empty: those levels in order; empty: a search from ``start``."""

    axis: str = "rate"  # "rate" (request rate, req/s) | "concurrency" (client-side cap)
    grid: tuple[float, ...] = ()
    start: float | None = None  # a search's first level (None: the scenario's rate, else 1)
    max_levels: int = 10
    tolerance: float = 0.1
    slo: Mapping[str, float] = field(default_factory=dict)  # added to the scenario's [slo]
    goodput: Mapping[str, float] | None = None  # None: the scenario's, else implied by the SLOs
    saturation: SaturationRule | None = field(default_factory=SaturationRule)  # None: no early stop
    report: bool = True

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"unknown sweep axis {self.axis!r}")

    @property
    def search(self) -> bool:
        return not self.grid


def parse_levels(text: str, flag: str, *, integer: bool = False) -> tuple[float, ...]:
    """``"1,2,4,8"`` -> (1.0, 2.0, 4.0, 8.0); UserError naming the flag and the bad item."""
    hint = f"e.g. {flag} " + ("8,16,32" if integer else "1,2,4,8") + f" (at most {MAX_LEVELS} levels)"
    items = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise UserError(f"{flag} needs at least one level", hint)
    out: list[float] = []
    for item in items:
        try:
            v = float(item)
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number", hint) from None
        if not math.isfinite(v) or v <= 0:
            raise UserError(f"{flag}: {item!r} must be a positive, finite number", hint)
        if integer and v != int(v):
            raise UserError(f"{flag}: {item!r} is not a whole number of requests", hint)
        if v in out:
            raise UserError(f"{flag} names {item} twice", hint)
        out.append(float(int(v)) if integer else v)
    if len(out) > MAX_LEVELS:
        raise UserError(f"{flag} names {len(out)} levels, more than {MAX_LEVELS}", hint)
    return tuple(out)


def _round(v: float) -> float:
    """A rate as a sweep names it: 4 significant digits (2.667, not 2.6666666)."""
    return float(f"{v:.4g}")


def next_level(levels: Sequence[SweepLevel], spec: SweepSpec, start: float) -> tuple[float | None, str]:
    """A search's next level from the levels run so far, or (None, why the search ends).

    Bracket: while nothing missed, double the highest level that met the SLOs; while nothing met, halve
    the lowest that missed. Then bisect between the two (:func:`rllmtop.record.sweep.sweep_answer` decides
    which they are) until they are within ``spec.tolerance`` of the lower (concurrency: 1 apart)."""
    integer = spec.axis == "concurrency"
    if len(levels) >= spec.max_levels:
        return None, f"reached --max-levels {spec.max_levels}"
    if not levels:
        return (float(max(1, round(start))) if integer else _round(start)), ""
    ans = sweep_answer(levels, spec.axis)
    best, nxt = ans.best, ans.next_up
    tried = {lvl.value for lvl in levels}
    unit = "" if integer else " req/s"
    if best is None and nxt is not None:
        v = float(int(nxt.value) // 2) if integer else _round(nxt.value / 2)
        if v < 1 if integer else v < 1e-3:
            return None, f"no level met the SLOs, down to {nxt.value:g}{unit}"
        return v, ""
    if best is not None and nxt is None:
        return (best.value * 2 if integer else _round(best.value * 2)), ""
    assert best is not None and nxt is not None
    lo, hi = best.value, nxt.value
    gap = max(1.0, spec.tolerance * lo) if integer else spec.tolerance * lo
    if hi - lo <= gap + 1e-12:
        within = "1" if integer and gap <= 1 else f"{100 * spec.tolerance:g}%"
        return None, f"converged: {lo:g}{unit} met the SLOs and {hi:g}{unit} missed them (within {within})"
    mid = float((int(lo) + int(hi)) // 2) if integer else _round((lo + hi) / 2)
    if mid in tried or mid <= lo or mid >= hi:
        return None, f"converged: no level left between {lo:g}{unit} and {hi:g}{unit}"
    return mid, ""


class SaturationStop:
    """A session sink that stops the level when :class:`SaturationRule` fires: judged on every scrape
    while the session is sending (RUNNING; a draining level offers no more load, so its queue cannot grow
    and the goodput of its last, longest requests says nothing of the load); on firing, a warning in the session's log (recorded) and
    ``session.stop(force=True, reason=...)``, which ends the level now with the reason as its status
    detail. ``verdict`` holds what fired (None: it did not)."""

    def __init__(
        self,
        session: Any,
        rule: SaturationRule,
        *,
        offered_rate: float | None = None,
        goodput: Mapping[str, float] | None = None,
    ) -> None:
        self.session = session
        self.monitor = SaturationMonitor(rule, offered_rate=offered_rate, goodput=goodput)
        self.verdict: SaturationVerdict | None = None
        self._live = False

    def __call__(self, rec: Record) -> None:
        if isinstance(rec, StateEvent):
            self._live = rec.state is SessionState.RUNNING
            return
        self.monitor.add(rec)
        if not isinstance(rec, Scrape) or not self._live or self.verdict is not None:
            return
        v = self.monitor.check(rec.t)
        if v.fired:
            self.verdict = v
            asyncio.get_running_loop().call_soon(self._stop, v)

    def _stop(self, v: SaturationVerdict) -> None:
        self.session.publish(
            LogEvent(v.t, "rllmtop", "warning", f"stopping this load level early: {v.reason}")
        )
        self.session.stop(force=True, reason=v.reason)


def _out_dir(out: str | Path | None, scenario: Scenario, stamp: str) -> Path:
    d = (
        Path(out)
        if out is not None
        else Path("recordings") / f"sweep-{safe_name(base_name(scenario), 'sweep')}-{stamp}"
    )
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d}: exists and is not a directory", "pass a new directory for the sweep")
    if d.is_dir() and any(d.glob("level-*.db")):
        raise UserError(
            f"--out {d}: already holds a sweep's recordings", "pass a new directory (each sweep gets its own)"
        )
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the sweep directory {d}: {e.strerror or e}", "pass --out DIR") from e
    return d


def _overrides(
    spec: SweepSpec, value: float, base: Mapping[str, Any], closed: bool = False
) -> dict[str, Any]:
    """The level's overrides over the user's. ``closed``: a concurrency level sends all at once (rate inf),
    as ``vllm bench serve``'s concurrency runs do."""
    o = dict(base)
    if spec.axis == "rate":
        o["request_rate"] = value
    else:
        o["max_concurrency"] = int(value)
        if closed:
            o.setdefault("request_rate", math.inf)
    return o


def _value_label(spec: SweepSpec, v: float) -> str:
    return f"rate {v:g} req/s" if spec.axis == "rate" else f"concurrency {v:g}"


def _level_line(lvl: SweepLevel) -> str:
    from rllmtop import fmt

    verdict = missed_text(lvl)
    return (
        f"{lvl.status}, {lvl.requests} requests, goodput {fmt.rate(lvl.goodput_rps)} req/s, TTFVT p99 "
        f"{fmt.seconds(lvl.ttfvt_p99)}, E2E p99 {fmt.seconds(lvl.e2e_p99)}, KV mean/peak "
        f"{fmt.percent(lvl.kv_mean, 0)}/{fmt.percent(lvl.kv_peak, 0)}, {fmt.count(lvl.preemptions)} preemptions: "
        f"{verdict}"
    )


def run_sweep(
    make: Callable[[Mapping[str, Any]], Scenario],
    spec: SweepSpec,
    *,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    api_key: str | None = None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
    stamp: str | None = None,
) -> int:
    """Run the sweep; returns 0 when some level met the SLOs, 1 when none did, 2 when a level failed
    (rllmtop could not run it: the sweep stops), 130 when interrupted (the levels done are kept).

    ``make(overrides)`` builds a level's scenario (``load_scenario`` with the user's overrides and the
    level's ``request_rate`` / ``max_concurrency``; the CLI passes it). Progress goes to ``progress``
    (stderr), the answer and the table to ``out`` (stdout)."""
    out = out or sys.stdout
    progress = progress or sys.stderr
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    user = dict(overrides or {})
    first_value = spec.grid[0] if spec.grid else None
    base = make(user)  # the scenario as given: a bad file or flag fails here, before anything runs
    rated = base.arrival.process in _RATED and base.arrival.ramp_up_strategy is None
    if spec.axis == "rate" and not rated:
        raise UserError(
            f"{base.path or base.name}: a rate sweep sets the request rate, but arrival.process = "
            f"{base.arrival.process!r}" + (" with a ramp-up" if base.arrival.process in _RATED else ""),
            "sweep --concurrencies instead, or use gamma, poisson or constant arrivals with a rate",
        )
    # concurrency levels: all at once (rate inf, a closed loop) when the scenario has a request count and a
    # rate to replace; else its own arrivals, capped
    closed = spec.axis == "concurrency" and rated and base.load.num_prompts is not None
    slo = {**dict(base.slo), **dict(spec.slo)}
    if spec.search and not slo:
        raise UserError(
            "a --search needs an SLO to search against",
            "add --slo KEY=VALUE (e.g. --slo ttfvt_p99=30), or an [slo] table to the scenario",
        )
    goodput = dict(spec.goodput) if spec.goodput is not None else dict(base.goodput) or goodput_from_slo(slo)
    start = spec.start
    if start is None:
        rate = base.arrival.rate
        start = rate if spec.axis == "rate" and math.isfinite(rate) else 1.0
    if first_value is None:
        first_value = start
    make(_overrides(spec, first_value, user, closed))  # the first level's overrides are valid
    directory = _out_dir(out_dir, base, stamp)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "rllmtop-sweep",
        "scenario": base_name(base),
        "source": base.path or base.name,
        "axis": spec.axis,
        "mode": "search" if spec.search else "grid",
        "grid": list(spec.grid) if spec.grid else None,
        "search": (
            {"start": start, "max_levels": spec.max_levels, "tolerance": spec.tolerance}
            if spec.search
            else None
        ),
        "overrides": {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in user.items()
        },
        "slo": slo,
        "goodput": goodput,
        "saturation_rule": spec.saturation.describe() if spec.saturation else None,
        "knee_rule": KNEE_RULE,
        "clock": "wall",
        "speed": 1.0,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "running",
        "detail": "",
        "levels": [],
        "answer": None,
        "knee": None,
    }
    levels: list[SweepLevel] = []
    t_start = time.monotonic()
    code = 0
    why_end = ""

    def save(status: str = "running", detail: str = "") -> None:
        doc["status"], doc["detail"] = status, detail
        doc["levels"] = [lvl.as_dict() for lvl in levels]
        ans = sweep_answer(levels, spec.axis, str(doc["clock"]))
        doc["answer"] = ans.as_dict() if levels else None
        knee = knee_of(sorted(levels, key=lambda x: x.value))
        doc["knee"] = {"level": knee.index, "value": knee.value} if knee else None
        doc["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc["wall_s"] = round(time.monotonic() - t_start, 3)
        write_sweep(directory, doc)

    save()
    total = str(len(spec.grid)) if spec.grid else f"<={spec.max_levels}"
    print(f"sweep {base_name(base)}: {directory}", file=progress, flush=True)
    try:
        index = 0
        while True:
            if spec.grid:
                if index >= len(spec.grid):
                    why_end = "every level of the grid ran"
                    break
                value = spec.grid[index]
            else:
                found, why_end = next_level(levels, spec, start)
                if found is None:
                    break
                value = found
            index += 1
            try:
                lvl, session_code = _run_level(
                    make, spec, _overrides(spec, value, user, closed), index, value, total, slo, goodput,
                    directory, api_key, progress,
                )  # fmt: skip
            except UserError as e:  # this level's scenario is out of bounds (a search went too far)
                code = 2
                why_end = f"level {index} ({_value_label(spec, value)}) could not run: {e.what}"
                print(f"level {index}/{total}: {why_end}" + (f" ({e.hint})" if e.hint else ""), file=progress)
                break
            levels.append(lvl)
            doc["clock"], doc["speed"] = _clock_of(directory / lvl.recording, doc)
            save()
            print(
                f"level {index}/{total}: {_value_label(spec, value)}: {_level_line(lvl)}",
                file=progress,
                flush=True,
            )
            if session_code == 130 and not lvl.stopped_early:
                code = 130
                why_end = f"interrupted during level {index}"
                break
            if lvl.status == SessionState.FAILED.value and not lvl.stopped_early:
                code = 2
                why_end = (
                    f"level {index} failed (rllmtop could not run it): see {lvl.summary or lvl.recording}"
                )
                break
    except KeyboardInterrupt:
        code = 130
        why_end = "interrupted between levels"
    status = "interrupted" if code == 130 else ("failed" if code == 2 else "done")
    save(status, why_end)
    answer = sweep_answer(levels, spec.axis, str(doc["clock"]))
    knee = knee_of(sorted(levels, key=lambda x: x.value))
    wall = time.monotonic() - t_start
    print(f"\nsweep {base_name(base)}: {len(levels)} level(s) in {wall:.1f} s; {why_end}", file=out)
    if levels:
        print(sweep_table(levels, knee=knee, best=answer.best).text(), file=out)
        print(answer.line, file=out)
    print(f"sweep summary: {directory / 'sweep.json'}", file=out)
    if spec.report and levels and code != 130:
        from rllmtop.record.sweep import build_sweep_report

        try:
            index_html = build_sweep_report(directory)
            print(f"sweep report: {index_html}", file=out)
        except UserError as e:
            print(f"sweep report: not written: {e.what}" + (f" ({e.hint})" if e.hint else ""), file=out)
    out.flush()
    if code:
        return code
    return 0 if answer.best is not None else 1


def _clock_of(path: Path, doc: Mapping[str, Any]) -> tuple[str, float]:
    """The clock the levels ran on (from a level's recording; every level of a sweep has the same)."""
    from rllmtop.record.reader import open_recording

    try:
        with open_recording(path) as rec:
            return rec.info.clock, float(rec.info.speed)
    except (UserError, OSError):
        return str(doc.get("clock", "wall")), float(doc.get("speed", 1.0))


def _run_level(
    make: Callable[[Mapping[str, Any]], Scenario],
    spec: SweepSpec,
    level_overrides: Mapping[str, Any],
    index: int,
    value: float,
    total: str,
    slo: Mapping[str, float],
    goodput: Mapping[str, float],
    directory: Path,
    api_key: str | None,
    progress: TextIO,
) -> tuple[SweepLevel, int]:
    from rllmtop.headless import run_headless
    from rllmtop.session import Session, SessionPlan

    sc = replace(make(level_overrides), slo=dict(slo), goodput=dict(goodput))
    stem = f"level-{index:02d}-{spec.axis}-{safe_name(f'{value:g}')}"
    path = directory / f"{stem}.db"
    print(f"level {index}/{total}: {_value_label(spec, value)} -> {path}", file=progress, flush=True)
    session = Session(
        SessionPlan(
            mode="headless",
            scenario=sc,
            engine=sc.engine,
            api_key=api_key,
            record_path=path,
            scrape_interval=sc.scrape_interval,
            info_extra=(("sweep_level", str(index)), ("sweep_" + spec.axis, f"{value:g}")),
        )
    )
    stop: SaturationStop | None = None
    if spec.saturation is not None:
        stop = SaturationStop(
            session,
            spec.saturation,
            offered_rate=value if spec.axis == "rate" else None,
            goodput=goodput,
        )
        session.add_sink(stop)
    text = io.StringIO()
    t = time.monotonic()
    code = run_headless(session, out=text, progress_out=progress)
    wall = time.monotonic() - t
    summary = directory / f"{stem}.txt"
    try:
        summary.write_text(text.getvalue(), encoding="utf-8")
        summary_rel = summary.name
    except OSError:
        summary_rel = ""
    reason = stop.verdict.reason if stop is not None and stop.verdict is not None else None
    try:
        lvl = level_entry(
            path,
            index=index,
            axis=spec.axis,
            value=value,
            slo=slo,
            goodput=goodput,
            base=directory,
            stop_reason=reason,
            summary=summary_rel,
            wall_s=round(wall, 3),
        )
    except UserError as e:  # the recording cannot be read back (it was never written, or is damaged)
        lvl = SweepLevel(
            index=index,
            value=value,
            rate=value if spec.axis == "rate" else None,
            concurrency=int(value) if spec.axis == "concurrency" else None,
            status=SessionState.FAILED.value,
            recording=path.name,
            missed=({"key": "status", "value": f"recording unreadable: {e.what}", "limit": None},),
            summary=summary_rel,
            wall_s=round(wall, 3),
        )
    return lvl, code
