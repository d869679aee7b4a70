"""A whole scenario from its (overridden) TOML document: the top level, each table, and the checks that
need several tables at once (the run must end, and stay within :data:`MAX_REQUESTS` and
:data:`MAX_RUN_SECONDS`)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from rllmtop.scenario.arrival import build_arrival
from rllmtop.scenario.classes import NAME_RE, build_classes, usable_name
from rllmtop.scenario.document import Raw
from rllmtop.scenario.engine import build_engine
from rllmtop.scenario.limits import (
    MAX_NAME_CHARS,
    MAX_REQUESTS,
    MAX_RUN_SECONDS,
    MAX_SEED,
    MAX_TEXT_CHARS,
    MIN_SCRAPE_INTERVAL,
)
from rllmtop.scenario.load import build_load
from rllmtop.scenario.matrix import build_matrix
from rllmtop.scenario.messages import Ctx, quantity
from rllmtop.scenario.schema import ArrivalSpec, LoadSpec, Scenario
from rllmtop.scenario.slo import build_slo
from rllmtop.scenario.tables import Table

__all__ = ["TOP_KEYS", "build_scenario", "planned_bounds"]

TOP_KEYS = (
    "name",
    "description",
    "seed",
    "model",
    "scrape_interval",
    "engine",
    "arrival",
    "load",
    "classes",
    "slo",
    "matrix",
)


def build_scenario(ctx: Ctx, raw: Raw, path: Path) -> Scenario:
    """The validated :class:`Scenario` (``text``, ``overrides``, ``cell`` and ``provenance`` are the
    loader's to fill)."""
    top = Table(ctx, raw, "", TOP_KEYS)
    name = usable_name(top, "name", _default_name(path.stem))
    base = path.parent
    engine = build_engine(ctx, raw.get("engine", {}))
    arrival = build_arrival(ctx, raw.get("arrival", {}), base)
    load = build_load(ctx, raw.get("load", {}))
    classes = build_classes(ctx, top, base)
    slo, goodput = build_slo(ctx, raw.get("slo", {}))
    matrix = build_matrix(ctx, raw.get("matrix", {}))
    sc = Scenario(
        name=name,
        engine=engine,
        arrival=arrival,
        load=load,
        classes=classes,
        description=top.string("description", "", nonempty=False, max_len=MAX_TEXT_CHARS),
        path=str(path),
        seed=top.integer("seed", 0, ge=0, le=MAX_SEED),
        model=top.line("model", None),
        slo=slo,
        goodput=goodput,
        matrix=matrix,
        scrape_interval=top.number("scrape_interval", 0.25, ge=MIN_SCRAPE_INTERVAL, le=3600),
    )
    _check_ends(ctx, sc)
    _check_classes_with_load(ctx, sc)
    _check_bounds(ctx, sc)
    return sc


def _default_name(stem: str) -> str:
    """The file name made usable as a scenario name (``my run.toml`` -> ``my-run``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", stem)[:MAX_NAME_CHARS]
    return name if NAME_RE.fullmatch(name) else ("s" + name)[:MAX_NAME_CHARS]


def _check_ends(ctx: Ctx, sc: Scenario) -> None:
    """The run must end: a finite process, or num_prompts / duration."""
    a, ld = sc.arrival, sc.load
    bounded = ld.num_prompts is not None or ld.duration is not None
    if a.process in ("gamma", "poisson", "constant"):
        if math.isinf(a.rate) and ld.num_prompts is None and a.ramp_up_strategy is None:
            ctx.error(
                "arrival.rate = inf sends everything at once but load.num_prompts is not set",
                "set load.num_prompts (or --num-prompts)",
            )
        if not bounded:
            ctx.error(
                "the run never ends: neither load.num_prompts nor load.duration is set",
                "set one of them (or --num-prompts / --duration)",
            )
        if a.rescale and (ld.num_prompts is None or math.isinf(a.rate)):
            ctx.error(
                "arrival.rescale needs load.num_prompts and a finite arrival.rate",
                "set load.num_prompts, or drop rescale",
            )
        if a.ramp_up_strategy is not None and ld.num_prompts is None:
            ctx.error(
                "arrival.ramp_up_strategy needs load.num_prompts (the rate moves with the request count, "
                "as in vllm bench serve)",
                "set load.num_prompts (or --num-prompts)",
            )
    elif a.process == "burst":
        if a.burst_interval is None and a.burst_size is None and ld.num_prompts is None:
            ctx.error(
                "arrival.process = 'burst' needs arrival.burst_size or load.num_prompts",
                "set arrival.burst_size = N (requests sent at once)",
            )
        if a.burst_interval is not None and not bounded:
            ctx.error(
                "repeated bursts never end: set load.num_prompts or load.duration",
                "or drop arrival.burst_interval for a single burst",
            )
        if a.burst_interval is not None and a.burst_size is None:
            ctx.error(
                "arrival.burst_interval needs arrival.burst_size",
                "set arrival.burst_size = N (requests per burst)",
            )
    elif a.process == "phases":
        if a.repeat_phases and not bounded:
            ctx.error(
                "repeated phases never end: set load.num_prompts or load.duration",
                "or set arrival.repeat_phases = false",
            )
        if all(p.rate == 0 for p in a.phases):
            ctx.error(
                "every arrival.phases[].rate is 0: nothing would be sent",
                "give at least one phase a rate > 0",
            )


def _check_classes_with_load(ctx: Ctx, sc: Scenario) -> None:
    if sc.load.api == "completions":
        for i, c in enumerate(sc.classes):
            if c.conversation is not None:
                ctx.error(
                    f"classes[{i}].conversation needs the chat API, but load.api = 'completions'",
                    "load.api = 'chat' (a conversation carries its history as chat messages)",
                )


# ------------------------------------------------------------------------------------ run length bounds


def _ramp_span(a: ArrivalSpec, n: int) -> float:
    """Expected seconds of a ramp-up schedule of n requests (rate r_i from start to end, gaps 1/r_i)."""
    s, e = a.ramp_up_start_rate or 1.0, a.ramp_up_end_rate or 1.0
    if n <= 1:
        return 1.0 / s
    if math.isclose(s, e):
        return n / s
    if a.ramp_up_strategy == "linear":  # sum of 1/(s + (e - s) i/(n-1)) ~ (n-1)/(e-s) ln(e/s)
        return (n - 1) / (e - s) * math.log(e / s) + 1.0 / s
    return (n - 1) * (1.0 / s - 1.0 / e) / math.log(e / s) + 1.0 / s  # exponential


def planned_bounds(a: ArrivalSpec, ld: LoadSpec) -> tuple[float, float, str]:
    """(requests, seconds of sending, what decides them) the schedule is expected to hold; ``inf`` when
    only the file read at run time can tell (a trace without num_prompts)."""
    n_cap = float(ld.num_prompts) if ld.num_prompts is not None else math.inf
    dur = ld.duration if ld.duration is not None else math.inf
    if a.process in ("gamma", "poisson", "constant"):
        if a.ramp_up_strategy is not None and ld.num_prompts is not None:
            span = _ramp_span(a, ld.num_prompts)
            n = n_cap if span <= dur else n_cap * dur / span
            return n, min(span, dur), "load.num_prompts over the ramp-up"
        rate = a.rate
        n_dur = rate * dur if not math.isinf(rate) else (math.inf if ld.num_prompts is None else n_cap)
        if ld.duration is not None and n_dur < n_cap:
            return n_dur, dur, "arrival.rate x load.duration"
        span = 0.0 if math.isinf(rate) else n_cap / rate
        return n_cap, min(span, dur), "load.num_prompts / arrival.rate"
    if a.process == "burst":
        size = float(a.burst_size or ld.num_prompts or 0)
        if a.burst_interval is None:
            return min(size, n_cap), 0.0, "the burst size"
        bursts = math.floor(dur / a.burst_interval) + 1 if ld.duration is not None else math.inf
        n = min(n_cap, size * bursts)
        span = (math.ceil(n / size) - 1) * a.burst_interval if size else 0.0
        return n, span, "bursts x arrival.burst_size"
    if a.process == "phases":
        cycle_n = sum(p.rate * p.duration for p in a.phases)
        cycle_s = sum(p.duration for p in a.phases)
        if not a.repeat_phases:
            n = min(cycle_n, n_cap) if ld.duration is None else min(n_cap, cycle_n * min(1.0, dur / cycle_s))
            return n, min(cycle_s, dur), "the phases' rate x duration"
        avg = cycle_n / cycle_s
        if ld.duration is not None and avg * dur < n_cap:
            return avg * dur, dur, "the phases' mean rate x load.duration"
        return (
            n_cap,
            min(n_cap / avg if avg > 0 else math.inf, dur),
            "load.num_prompts / the phases' mean rate",
        )
    return n_cap, dur, "load.num_prompts"  # trace: its length and span are checked when it is read


def _check_bounds(ctx: Ctx, sc: Scenario) -> None:
    a, ld = sc.arrival, sc.load
    n, span, why = planned_bounds(a, ld)
    turns = max(
        (c.conversation.turns_max or c.conversation.turns) if c.conversation else 1 for c in sc.classes
    )
    requests = n * turns
    if a.process == "trace":  # the file's length and span are known once it is read (the workload checks)
        requests = requests if math.isfinite(requests) else 0.0
        span = span if math.isfinite(span) else 0.0
    if requests > MAX_REQUESTS:
        per = f", up to {turns} turns each" if turns > 1 else ""
        ctx.error(
            f"the run plans about {quantity(round(requests) if requests < 1e15 else requests)} requests ({why}{per}: {_named(ctx, sc)})",
            f"allowed: at most {MAX_REQUESTS:,} requests in one run (MAX_REQUESTS); lower num_prompts, "
            "duration or the rate",
        )
    if span > MAX_RUN_SECONDS:
        ctx.error(
            f"the schedule would span about {quantity(round(span) if span < 1e15 else span)} s ({why}: {_named(ctx, sc)})",
            f"allowed: at most {MAX_RUN_SECONDS:,.0f} s of sending (MAX_RUN_SECONDS, 7 days); set load.duration "
            "or raise the rate",
        )


def _named(ctx: Ctx, sc: Scenario) -> str:
    """The fields that set the run's length, as given (``load.num_prompts = 1000000000``, ``--duration 5``)."""
    a, ld = sc.arrival, sc.load
    parts = []
    if ld.num_prompts is not None:
        parts.append(ctx.named("load.num_prompts", ld.num_prompts))
    if ld.duration is not None:
        parts.append(ctx.named("load.duration", ld.duration))
    if a.process in ("gamma", "poisson", "constant"):
        if a.ramp_up_strategy is not None:
            parts.append(f"ramp {a.ramp_up_start_rate:g} -> {a.ramp_up_end_rate:g} req/s")
        else:
            parts.append(ctx.named("arrival.rate", a.rate))
    elif a.process == "burst":
        if a.burst_size is not None:
            parts.append(ctx.named("arrival.burst_size", a.burst_size))
        if a.burst_interval is not None:
            parts.append(ctx.named("arrival.burst_interval", a.burst_interval))
    elif a.process == "phases":
        parts.append(f"{len(a.phases)} phases")
    return ", ".join(parts)
