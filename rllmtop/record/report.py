"""Reports from recordings: figures, ASU tables, one self-contained HTML page; comparisons of recordings.

``build_report(path, out_dir)`` writes, for one recording:

- figures, each as PNG and SVG: ``kv_usage`` (KV-cache usage over time, preemptions per window below),
  ``running_waiting``, ``run_time`` (E2E CDF + histogram, stragglers marked, the rule in the caption),
  ``reasoning_length`` (by class and difficulty), ``latency_cdfs`` (TTFT, TTFVT, E2E), ``arrivals``;
- ``asu.md`` and ``asu.json``: the ASU table per class (numbers from :func:`rllmtop.metrics.analysis.asu_summary`,
  formatted by :data:`rllmtop.summary.COLUMNS`), the engine summary, and the definitions next to them;
- ``index.html``: all of it on one page that needs no other file (figures inlined as PNG, each linking to
  its PNG and SVG files).

``build_comparison(paths, out_dir, force=...)`` writes the same figures overlaid (one colour per run),
``compare.md`` / ``compare.json`` / ``index.html`` with the ASU tables side by side, deltas against the first
run (the baseline), the engine summary, and two-sided Mann-Whitney U tests (Holm-adjusted over all tests of
the comparison) on E2E, TTFVT and reasoning-length distributions per class.

Comparable runs (otherwise ``build_comparison`` refuses unless ``force``): the runs drove the *same workload*:
the same scenario (name without a matrix-cell suffix) and seed, the same arrival, load and request-class
tables, the same command-line overrides. Engine settings, the model, SLOs and the scrape interval may differ:
comparing them is the point. Cells of one experiment matrix (same scenario file and overrides) are
comparable even when a cell varies a workload key on purpose (e.g. ``seed`` replicates): the cell is
declared in the recording.

Time axes are seconds since the load started: the first scheduled send (runs of one workload share the
schedule, so their axes line up exactly, however long each engine took to start; the session's ``running``
state when nothing was scheduled). Matplotlib is optional (``pip install 'rllmtop[report]'``); it is
imported only here, with no global backend change (figures are rendered with ``Figure`` + Agg).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllmtop.errors import UserError
from rllmtop.events import MetricSample, RequestRecord, RequestStatus, SessionInfo, SessionState
from rllmtop.metrics.analysis import (
    KV_FULL,
    MIN_TEST_N,
    AsuSummary,
    ClassSummary,
    EngineSummary,
    MannWhitney,
    StragglerBaselines,
    StragglerRule,
    Timeline,
    asu_summary,
    engine_summary,
    holm,
    mann_whitney,
    scrape_step,
    timeline,
)
from rllmtop.summary import COLUMNS, Column, markdown_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "RunData",
    "build_comparison",
    "build_report",
    "comparability_problems",
    "load_run",
    "write_comparison",
    "write_report",
]

SAMPLE_NAMES = (
    "kv_cache_usage",
    "requests_running",
    "requests_waiting",
    "preemptions_total",
    "generation_tokens_total",
    "prefix_cache_hits_total",
    "prefix_cache_queries_total",
)

FIGURES: tuple[str, ...] = (
    "kv_usage",
    "running_waiting",
    "run_time",
    "reasoning_length",
    "latency_cdfs",
    "arrivals",
)
"""Figure file stems, in page order (each written as ``<stem>.png`` and ``<stem>.svg``)."""


DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("TTFT", "first token of any kind (reasoning or answer) minus send time"),
    (
        "TTFVT",
        "first visible (answer, non-reasoning) token minus send time; requests cut while reasoning have none",
    ),
    ("E2E / run time", "last token (request end) minus send time"),
    ("tok/s", "output tokens (reasoning + answer) of requests that ended / span from first send to last end"),
    ("percentiles", "linear interpolation between closest ranks, over requests that ended ok"),
    ("acc", "correct / graded requests"),
)


# ============================================================================================ run data


@dataclass(frozen=True)
class RunData:
    """What a report needs from one recording (build it from a file with :func:`load_run`)."""

    label: str  # how the run is named in tables and legends
    info: SessionInfo
    requests: Sequence[RequestRecord]
    samples: Sequence[MetricSample]
    status: str = SessionState.DONE.value
    status_detail: str = ""
    duration: float | None = None  # recorded session seconds (None: from the records)
    load_start: float | None = None  # the RUNNING state's time (used only when no request was scheduled)
    path: Path | None = None


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """Read a recording (requests, the engine series the report draws, the load start)."""
    from rllmtop.record.store import open_recording

    p = Path(path)
    with open_recording(p) as rec:
        info = rec.info
        start = next((st.t for st in rec.states() if st.state is SessionState.RUNNING), None)
        status = rec.status
        return RunData(
            label=label or _default_label(info, p),
            info=info,
            requests=rec.requests(),
            samples=rec.samples(names=list(SAMPLE_NAMES)),
            status=status.value if isinstance(status, SessionState) else str(status),
            status_detail=str(rec.status_detail or ""),
            duration=rec.duration,
            load_start=start,
            path=p,
        )


def _default_label(info: SessionInfo, path: Path | None) -> str:
    cell = dict(info.extra).get("matrix_cell") or _header_fields(info.scenario_text).get("matrix cell")
    if cell:
        return cell
    return path.stem if path is not None else (info.scenario_name or info.session_id)


_HEADER = "# rllmtop: "


def _header_fields(text: str) -> dict[str, str]:
    """The ``# rllmtop: key: value`` lines the scenario loader writes above the TOML (overrides, cell)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith(_HEADER):
            break
        key, _, value = line[len(_HEADER) :].partition(":")
        out[key.strip()] = value.strip()
    return out


def _strip_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(_HEADER):
        lines.pop(0)
    return "".join(lines)


# ============================================================================================ numbers


# ============================================================================================ derived run


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_STRAGGLER = "#d62728"
_NICE = (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _nice_step(x: float) -> float:
    for n in _NICE:
        if n >= x - 1e-12:
            return float(n)
    return float(math.ceil(x / 3600) * 3600)


@dataclass
class _Run:
    """A run with everything derived once: summary, engine numbers, timelines, stragglers."""

    data: RunData
    color: str
    t0: float
    t1: float
    summary: AsuSummary
    engine: EngineSummary
    baselines: StragglerBaselines
    ok: list[RequestRecord] = field(default_factory=list)
    straggler: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per ok request
    tl_gauge: Timeline | None = None
    tl_count: Timeline | None = None

    @property
    def label(self) -> str:
        return self.data.label

    @staticmethod
    def x(tl: Timeline) -> np.ndarray:
        """Bin centres, seconds since load start (the timelines are built on the shifted clock)."""
        return tl.t + tl.step / 2


def _ended(requests: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.t_done is not None or r.status is not RequestStatus.OK]


def _derive(runs: Sequence[RunData], rule: StragglerRule) -> tuple[list[_Run], float, float]:
    out: list[_Run] = []
    for i, d in enumerate(runs):
        sent = [r.t_sent for r in d.requests if r.t_sent is not None]
        ends = [r.t_done for r in d.requests if r.t_done is not None]
        # load start = the first *scheduled* send: cells of one workload share the schedule, so their time
        # axes line up exactly (the RUNNING state only when nothing was scheduled)
        planned = [r.t_scheduled for r in d.requests]
        t0 = (
            min(planned)
            if planned
            else (d.load_start if d.load_start is not None else min(sent, default=0.0))
        )
        last = [*ends, *(s.t for s in d.samples[-1:])]
        t1 = max(ends) if ends else (d.duration if d.duration is not None else max(last, default=t0))
        ended = _ended(d.requests)
        summary = asu_summary(d.requests, rule)
        baselines = rule.baselines(ended)
        ok = [r for r in ended if r.status is RequestStatus.OK and r.e2e is not None]
        flags = np.array(
            [baselines.why(r.cls, r.e2e, r.reasoning_tokens) is not None for r in ok], dtype=bool
        )
        out.append(
            _Run(
                data=d,
                color=_PALETTE[i % len(_PALETTE)],
                t0=t0,
                t1=max(t1, t0),
                summary=summary,
                engine=engine_summary(d.samples, t0, max(t1, t0)),
                baselines=baselines,
                ok=ok,
                straggler=flags,
            )
        )
    span = max((r.t1 - r.t0 for r in out), default=1.0) or 1.0
    gstep = _nice_step(max(min(scrape_step(r.data.samples) for r in out) if out else 0.25, span / 1500))
    cstep = _nice_step(max(span / 120, gstep))
    for r in out:
        # timelines on a clock shifted to the load start, so every run's windows start at its load start
        t0 = r.t0
        end = (r.data.duration if r.data.duration is not None else r.t1) or r.t1
        end = max(end, r.t1, t0 + cstep) - t0
        samples = [MetricSample(s.t - t0, s.name, s.value, s.labels) for s in r.data.samples]
        r.tl_gauge = timeline((), samples, step=gstep, t_end=end)
        # counts only: no token times (decoding gaps is the costly part of a timeline and is not drawn here)
        light = [
            replace(
                q,
                gaps=b"",
                t_first_token=None,
                t_scheduled=q.t_scheduled - t0,
                t_sent=None if q.t_sent is None else q.t_sent - t0,
                t_done=None if q.t_done is None else q.t_done - t0,
            )
            for q in r.data.requests
        ]
        r.tl_count = timeline(light, samples, step=cstep, t_end=end)
    return out, gstep, cstep


# ============================================================================================ figures


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError(
            "figures need matplotlib, which is not installed",
            "pip install 'rllmtop[report]'",
        ) from e
    matplotlib.rcParams["svg.hashsalt"] = "rllmtop"  # stable SVG ids
    return Figure


@dataclass(frozen=True)
class _FigureOut:
    name: str
    title: str
    caption: str
    png: Path
    svg: Path


@dataclass(frozen=True)
class _Ctx:
    runs: list[_Run]
    gstep: float
    cstep: float
    rule: StragglerRule

    @property
    def single(self) -> bool:
        return len(self.runs) == 1


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")


def _time_axis(ax: Axes) -> None:
    ax.set_xlabel("time since load start (s)")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)


def _fig_kv_usage(fig: Figure, ctx: _Ctx) -> str:
    ax, axp = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    any_kv = False
    width = ctx.cstep / (len(ctx.runs) + 1)
    for i, r in enumerate(ctx.runs):
        assert r.tl_gauge is not None and r.tl_count is not None
        kv = r.tl_gauge.columns["kv_cache_usage"]
        pre = r.tl_count.columns["preemptions"]
        served = bool(np.any(~np.isnan(kv)))
        any_kv = any_kv or served
        npre = r.engine.preemptions
        pre_txt = "preemptions not served" if npre is None else f"{npre:.0f} preemptions"
        label = f"{r.label} ({pre_txt})" if served else f"{r.label} (KV usage not served)"
        ax.plot(r.x(r.tl_gauge), 100 * kv, color=r.color, lw=1.3, label=label)
        if not np.all(np.isnan(pre)):
            xs = r.x(r.tl_count) - ctx.cstep / 2 + (i + 0.5) * width
            axp.bar(xs, np.nan_to_num(pre), width=width, color=r.color, align="edge")
    ax.axhline(100 * KV_FULL, color="#999999", ls=":", lw=0.8)
    ax.set_ylabel("KV-cache usage (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if not any_kv:
        _no_data(ax, "the engine did not serve KV-cache usage")
    ax.set_title("KV-cache usage over time")
    axp.set_ylabel(f"preemptions\nper {ctx.cstep:g} s")
    _time_axis(axp)
    return (
        f"KV-cache usage (%) as the engine reported it: last reading in each {ctx.gstep:g} s window "
        f"(dotted line: {100 * KV_FULL:.0f}%). Below: recompute preemptions counted in {ctx.cstep:g} s windows."
    )


def _fig_running_waiting(fig: Figure, ctx: _Ctx) -> str:
    ax_r, ax_w = fig.subplots(2, 1, sharex=True)
    for r in ctx.runs:
        assert r.tl_gauge is not None
        x = r.x(r.tl_gauge)
        ax_r.plot(x, r.tl_gauge.columns["requests_running"], color=r.color, lw=1.3, label=r.label)
        ax_w.plot(x, r.tl_gauge.columns["requests_waiting"], color=r.color, lw=1.3, label=r.label)
    ax_r.set_title("Requests running and waiting in the engine")
    ax_r.set_ylabel("running (requests)")
    ax_w.set_ylabel("waiting (requests)")
    for ax in (ax_r, ax_w):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_r.legend(loc="upper right", fontsize="small")
    _time_axis(ax_w)
    return (
        f"Engine gauges: requests in the running batch and in the waiting queue (last reading in each "
        f"{ctx.gstep:g} s window)."
    )


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(values)
    return x, np.arange(1, x.size + 1) / x.size


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` of a CDF for drawing (first and last kept): small SVGs for big runs."""
    if x.size <= max_points:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(int))
    return x[idx], y[idx]


def _fig_run_time(fig: Figure, ctx: _Ctx) -> str:
    ax_c, ax_h = fig.subplots(1, 2)
    all_e2e = [np.array([q.e2e for q in r.ok], dtype=float) for r in ctx.runs]
    nonempty = [a for a in all_e2e if a.size]
    if not nonempty:
        _no_data(ax_c, "no request finished")
        _no_data(ax_h, "no request finished")
    else:
        hi = max(float(a.max()) for a in nonempty)
        pos = np.concatenate([a[a > 0] for a in nonempty])
        lo = float(pos.min()) if pos.size else 0.0
        log_x = not ctx.single and lo > 0 and hi / lo > 50  # runs of very different scale: log x
        if log_x:
            bins = np.geomspace(lo * 0.999, hi * 1.001, 41)
            ax_c.set_xscale("log")
            ax_h.set_xscale("log")
        else:
            bins = np.linspace(0.0, hi * 1.001 if hi > 0 else 1.0, 41)
        for r, e2e in zip(ctx.runs, all_e2e, strict=True):
            if not e2e.size:
                continue
            x, y = _ecdf(e2e)
            order = np.argsort(e2e, kind="stable")
            flags = r.straggler[order]
            n_s = int(flags.sum())
            ax_c.step(*_thin(x, y), where="post", color=r.color, lw=1.4, label=f"{r.label} (n={e2e.size})")
            if n_s:
                ax_c.scatter(
                    x[flags], y[flags], s=18, marker="o", facecolors="none", edgecolors=_STRAGGLER, zorder=3
                )
            normal, strag = e2e[~r.straggler], e2e[r.straggler]
            if ctx.single:
                ax_h.hist(
                    [normal, strag],
                    bins=bins,
                    stacked=True,
                    color=[r.color, _STRAGGLER],
                    label=["requests", f"stragglers ({n_s})"],
                )
            else:
                ax_h.hist(e2e, bins=bins, histtype="step", lw=1.4, color=r.color, label=r.label)
                if n_s:
                    ax_h.plot(
                        strag,
                        np.zeros(n_s),
                        "|",
                        ms=12,
                        mew=1.5,
                        color=r.color,
                        clip_on=False,
                        label=f"stragglers of {r.label} ({n_s})",
                    )
        ax_c.scatter([], [], s=18, marker="o", facecolors="none", edgecolors=_STRAGGLER, label="stragglers")
        ax_c.legend(loc="best", fontsize="small")
        ax_h.legend(loc="best", fontsize="small")
    ax_c.set_title("Run time (E2E): CDF")
    ax_c.set_xlabel("E2E run time (s)")
    ax_c.set_ylabel("fraction of finished requests")
    ax_c.set_ylim(0, 1.02)
    ax_h.set_title("Run time (E2E): histogram")
    ax_h.set_xlabel("E2E run time (s)")
    ax_h.set_ylabel("requests")
    for ax in (ax_c, ax_h):
        ax.grid(True, alpha=0.3)
    scale = " Log x when the runs differ by more than 50x." if not ctx.single else ""
    return f"Run time of requests that finished ok.{scale} Straggler: {ctx.rule.describe()}."


_DIFF_ORDER = {"easy": 0, "medium": 1, "hard": 2, "mcq": 3}


def _groups(runs: Sequence[_Run]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], tuple[int, int, int]] = {}
    cls_order: dict[str, int] = {}
    for r in runs:
        for q in r.ok:
            cls_order.setdefault(q.cls, len(cls_order))
            key = (q.cls, q.difficulty)
            if key not in seen:
                seen[key] = (_DIFF_ORDER.get(q.difficulty or q.cls, 9), cls_order[q.cls], len(seen))
    return sorted(seen, key=lambda k: seen[k])


def _fig_reasoning(fig: Figure, ctx: _Ctx) -> str:
    ax = fig.subplots()
    groups = _groups(ctx.runs)
    if not groups:
        _no_data(ax, "no request finished")
    n = len(ctx.runs)
    width = 0.8 / n
    for i, r in enumerate(ctx.runs):
        data: list[list[int]] = []
        pos: list[float] = []
        for g, (cls, diff) in enumerate(groups):
            vals = [q.reasoning_tokens for q in r.ok if q.cls == cls and q.difficulty == diff]
            if vals:
                data.append(vals)
                pos.append(g + (i - (n - 1) / 2) * width)
        if not data:
            continue
        bp = ax.boxplot(
            data,
            positions=pos,
            widths=width * 0.85,
            patch_artist=True,
            manage_ticks=False,
            flierprops={"marker": ".", "markersize": 3, "markeredgecolor": r.color, "alpha": 0.6},
            medianprops={"color": "black"},
        )
        for box in bp["boxes"]:
            box.set_facecolor(r.color)
            box.set_alpha(0.75)
        med = float(np.median([q.reasoning_tokens for q in r.ok]))
        ax.plot([], [], "s", color=r.color, label=f"{r.label} (median {med:.0f} tok)")
    capped = False
    for g, (cls, diff) in enumerate(groups):
        cap = max(
            (q.max_tokens for r in ctx.runs for q in r.ok if q.cls == cls and q.difficulty == diff), default=0
        )
        if cap > 0:
            ax.hlines(
                cap,
                g - 0.45,
                g + 0.45,
                colors="#666666",
                linestyles="--",
                lw=1,
                label="_nolegend_" if capped else "max_tokens (output cap)",
            )
            capped = True
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([c if d in ("", c) else f"{c}\n({d})" for c, d in groups])
    ax.set_xlim(-0.6, max(len(groups), 1) - 0.4)
    ax.set_ylabel("reasoning tokens per request")
    ax.set_xlabel("request class (difficulty)")
    ax.set_title("Reasoning length by class and difficulty")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    if groups:
        ax.legend(loc="best", fontsize="small")
    return (
        "Reasoning tokens per request that finished ok: box = quartiles, line = median, whiskers = 1.5 IQR, "
        "dots = outliers."
    )


def _fig_latency(fig: Figure, ctx: _Ctx) -> str:
    axes = fig.subplots(1, 3, sharey=True)
    getters: tuple[tuple[str, Callable[[RequestRecord], float | None]], ...] = (
        ("TTFT", lambda q: q.ttft),
        ("TTFVT", lambda q: q.ttfvt),
        ("E2E", lambda q: q.e2e),
    )
    for ax, (name, get) in zip(axes, getters, strict=True):
        plotted = False
        lo, hi = math.inf, 0.0
        for r in ctx.runs:
            vals = np.array([v for q in r.ok if (v := get(q)) is not None], dtype=float)
            if not vals.size:
                continue
            x, y = _ecdf(vals)
            ax.step(*_thin(x, y), where="post", color=r.color, lw=1.4, label=f"{r.label} (n={vals.size})")
            plotted = True
            pos = vals[vals > 0]
            if pos.size:
                lo, hi = min(lo, float(pos.min())), max(hi, float(pos.max()))
        if not plotted:
            _no_data(ax, f"no {name}")
        elif lo > 0 and hi / lo > 50:
            ax.set_xscale("log")
        ax.set_title(f"{name} CDF")
        ax.set_xlabel(f"{name} (s)")
        ax.grid(True, alpha=0.3, which="both")
        if plotted:
            ax.legend(loc="lower right", fontsize="x-small")
    axes[0].set_ylabel("fraction of finished requests")
    axes[0].set_ylim(0, 1.02)
    return (
        "Latency CDFs over requests that finished ok (log scale when values span more than 50x). "
        + " ".join(f"{k}: {v}." for k, v in DEFINITIONS[:3])
    )


def _fig_arrivals(fig: Figure, ctx: _Ctx) -> str:
    ax_a, ax_c = fig.subplots(2, 1, sharex=True)
    w = ctx.cstep
    for r in ctx.runs:
        assert r.tl_count is not None
        x = r.x(r.tl_count)
        cols = r.tl_count.columns
        if ctx.single:
            ax_a.bar(x, cols["arrivals"] / w, width=w * 0.9, color=r.color, label="sent")
        else:
            ls = ("-", "--", ":", "-.")[ctx.runs.index(r) % 4]  # identical schedules stay visible
            ax_a.step(x, cols["arrivals"] / w, where="mid", color=r.color, lw=1.3, ls=ls, label=r.label)
        ax_c.step(
            x, cols["completions"] / w, where="mid", color=r.color, lw=1.3, label=f"{r.label} completed"
        )
        err = cols["errors"]
        if np.any(err > 0):
            ax_c.plot(x[err > 0], err[err > 0] / w, "x", color=_STRAGGLER, label=f"{r.label} errors")
    ax_a.set_title("Arrivals and completions")
    ax_a.set_ylabel(f"sent (req/s,\n{w:g} s windows)")
    ax_c.set_ylabel(f"ended (req/s,\n{w:g} s windows)")
    for ax in (ax_a, ax_c):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    _time_axis(ax_c)
    return (
        f"Requests sent (top) and ended (bottom: completed ok; errors as red crosses) per second, "
        f"counted in {w:g} s windows."
    )


_FIGURE_SPECS: tuple[tuple[str, str, tuple[float, float], Callable[[Figure, _Ctx], str]], ...] = (
    ("kv_usage", "KV-cache usage over time", (10, 5.5), _fig_kv_usage),
    ("running_waiting", "Running and waiting requests", (10, 5.5), _fig_running_waiting),
    ("run_time", "Run-time distribution", (12, 4.8), _fig_run_time),
    ("reasoning_length", "Reasoning length by class and difficulty", (10, 5), _fig_reasoning),
    ("latency_cdfs", "TTFT, TTFVT and E2E CDFs", (13, 4.5), _fig_latency),
    ("arrivals", "Arrivals timeline", (10, 5), _fig_arrivals),
)


def _draw_figures(ctx: _Ctx, out_dir: Path) -> list[_FigureOut]:
    figure_cls = _matplotlib()
    out: list[_FigureOut] = []
    for name, title, size, draw in _FIGURE_SPECS:
        fig = figure_cls(figsize=size, layout="constrained")
        caption = draw(fig, ctx)
        png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
        fig.savefig(png, dpi=100, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None})
        out.append(_FigureOut(name, title, caption, png, svg))
    return out


# ============================================================================================ tables


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f}ms"
    return f"{v:.2f}s" if v < 100 else f"{v:.0f}s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [i > 0 for i in range(len(head))]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    """Fixed-width table for a terminal (same cells as the Markdown one)."""
    right = right or [i > 0 for i in range(len(head))]
    cells = [list(head), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _html_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    right = right or [i > 0 for i in range(len(head))]

    def cell(tag: str, text: str, r: bool) -> str:
        cls = ' class="r"' if r else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", h, r) for h, r in zip(head, right, strict=True)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(cell("td", c, r) for c, r in zip(row, right, strict=True)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _asu_rows(summary: AsuSummary) -> list[ClassSummary]:
    rows = list(summary.classes)
    if len(rows) != 1:
        rows.append(summary.overall)
    return rows


def _columns_table(
    columns: Sequence[Column], rows: Sequence[ClassSummary]
) -> tuple[list[str], list[list[str]], list[bool]]:
    return (
        [c.title for c in columns],
        [[c.get(r) for c in columns] for r in rows],
        [c.right for c in columns],
    )


_ENGINE_RIGHT = (False, False, *([True] * 8))
_ENGINE_HEAD = (
    "run",
    "status",
    "load window",
    "KV mean",
    "KV peak",
    f"time KV>={100 * KV_FULL:.0f}%",
    "running mean/peak",
    "waiting mean/peak",
    "preemptions",
    "prefix hit",
)


def _engine_row(r: _Run, base: _Run | None = None) -> list[str]:
    e = r.engine

    def delta(v: float | None, b: float | None, pct_points: bool = False) -> str:
        if base is None or v is None or b is None:
            return ""
        if pct_points:
            return f" ({100 * (v - b):+.1f} pp)"
        if b == 0:
            return "" if v == 0 else f" (+{v:.0f})"
        return f" ({100 * (v - b) / b:+.0f}%)"

    be = base.engine if base is not None else None
    status = r.data.status + (f": {r.data.status_detail}" if r.data.status_detail else "")
    return [
        r.label,
        status,
        f"{e.window_s:.1f}s",
        _pct(e.kv_usage_mean) + delta(e.kv_usage_mean, be.kv_usage_mean if be else None, True),
        _pct(e.kv_usage_peak) + delta(e.kv_usage_peak, be.kv_usage_peak if be else None, True),
        _pct(e.kv_full_frac),
        f"{_num(e.running_mean)}/{_num(e.running_peak, '{:.0f}')}",
        f"{_num(e.waiting_mean)}/{_num(e.waiting_peak, '{:.0f}')}",
        _num(e.preemptions, "{:.0f}") + delta(e.preemptions, be.preemptions if be else None),
        _pct(e.prefix_hit_rate),
    ]


def _engine_note(gstep: float) -> str:
    return (
        "Engine numbers over the load window (first scheduled send to the last request end): means are time-weighted "
        f"over the last reading in each {gstep:g} s window; peaks are the highest reading of any engine; "
        "preemptions and prefix-cache hits are counter increases over the session (a counter reset counts "
        "from 0); '-' means the engine did not serve the metric."
    )


def _definitions_md(rule: str) -> str:
    lines = [f"- **straggler**: {rule}"]
    lines += [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    lines += [f"- **{c.title}**: {c.help}" for c in COLUMNS]
    return "\n".join(lines)


def _definitions_html(rule: str) -> str:
    items = [("straggler", rule), *DEFINITIONS, *((c.title, c.help) for c in COLUMNS)]
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items) + "</dl>"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _run_meta(r: RunData) -> list[tuple[str, str]]:
    info = r.info
    extra = dict(info.extra)
    started = (
        datetime.fromtimestamp(info.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if info.started_at
        else "-"
    )
    rows = [
        ("recording", str(r.path) if r.path else "-"),
        ("scenario", info.scenario_name or "-"),
        ("seed", "-" if info.seed is None else str(info.seed)),
        ("engine", " ".join(x for x in (info.engine_kind, info.engine_version) if x) or "-"),
        ("model", info.model or "-"),
        ("status", r.status + (f" ({r.status_detail})" if r.status_detail else "")),
        ("started", started),
        ("duration", "-" if r.duration is None else f"{r.duration:.1f} s"),
        ("requests", f"{len(r.requests)}"),
    ]
    rows += [(k, v) for k, v in extra.items()]
    header = _header_fields(info.scenario_text)
    rows += [(k, v) for k, v in header.items() if k.replace(" ", "_") not in extra]
    if info.launch_command:
        rows.append(("launch command", " ".join(info.launch_command)))
    return rows


# ============================================================================================ HTML


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1280px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } .r { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .9em; }
dt { font-weight: 600; } dd { margin: 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em 1em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
"""


def _figures_html(figs: Sequence[_FigureOut], out_dir: Path) -> str:
    parts = []
    for f in figs:
        data = base64.b64encode(f.png.read_bytes()).decode("ascii")
        png, svg = f.png.relative_to(out_dir).as_posix(), f.svg.relative_to(out_dir).as_posix()
        parts.append(
            f'<figure id="fig-{f.name}"><a href="{html.escape(svg)}">'
            f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}"></a>'
            f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)} "
            f'Files: <a href="{html.escape(png)}">{html.escape(png)}</a>, '
            f'<a href="{html.escape(svg)}">{html.escape(svg)}</a>.</figcaption></figure>'
        )
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        f'<p style="color:#888;font-size:.8em">generated by rllmtop report</p></body></html>\n'
    )


def _prepare_out(out_dir: Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report output {out} exists and is not a directory", "pass --out DIR (a directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report directory {out}: {e.strerror or e}", "pass --out DIR") from e
    return out


# ============================================================================================ report


def write_report(run: RunData, out_dir: str | Path, *, rule: StragglerRule | None = None) -> Path:
    """Figures, ``asu.md``, ``asu.json`` and ``index.html`` for one run; returns the index path."""
    rule = rule or StragglerRule()
    _matplotlib()  # fail before writing anything
    out = _prepare_out(Path(out_dir))
    runs, gstep, cstep = _derive([run], rule)
    r = runs[0]
    ctx = _Ctx(runs, gstep, cstep, rule)
    figs = _draw_figures(ctx, out)
    summary = r.summary
    title = f"rllmtop report: {run.info.scenario_name or run.label}"
    meta = _run_meta(run)
    eng_head, eng_rows = list(_ENGINE_HEAD), [_engine_row(r)]

    md = [
        f"# {title}",
        "",
        _md_table(["field", "value"], [[k, v] for k, v in meta], [False, False]),
        "",
        "## ASU summary per class",
        "",
        markdown_table(summary) if summary.overall.requests else "No request ended.",
        "",
        f"Stragglers: {summary.straggler_rule}.",
        "",
        "## Engine",
        "",
        _md_table(eng_head, eng_rows, _ENGINE_RIGHT),
        "",
        _engine_note(gstep),
        "",
        "## Definitions",
        "",
        _definitions_md(summary.straggler_rule),
        "",
        "## Figures",
        "",
        *[f"- [{f.title}]({f.png.name}) ([SVG]({f.svg.name})): {f.caption}" for f in figs],
        "",
    ]
    (out / "asu.md").write_text("\n".join(md), encoding="utf-8")
    _write_json(
        out / "asu.json",
        {
            "recording": str(run.path) if run.path else None,
            "label": run.label,
            "scenario": run.info.scenario_name,
            "seed": run.info.seed,
            "status": run.status,
            "straggler_rule": summary.straggler_rule,
            "definitions": dict(DEFINITIONS),
            "overall": summary.overall.as_dict(),
            "classes": [c.as_dict() for c in summary.classes],
            "engine": r.engine.as_dict(),
            "engine_note": _engine_note(gstep),
            "figures": {f.name: {"png": f.png.name, "svg": f.svg.name, "caption": f.caption} for f in figs},
        },
    )
    head, rows, right = _columns_table(COLUMNS, _asu_rows(summary))
    body = [
        _html_table(["field", "value"], [[k, v] for k, v in meta], [False, False]),
        "<h2>ASU summary per class</h2>",
        _html_table(head, rows, right) if summary.overall.requests else "<p>No request ended.</p>",
        f"<p><b>Stragglers:</b> {html.escape(summary.straggler_rule)}.</p>",
        "<h2>Engine</h2>",
        _html_table(eng_head, eng_rows, _ENGINE_RIGHT),
        f"<p>{html.escape(_engine_note(gstep))}</p>",
        "<h2>Figures</h2>",
        _figures_html(figs, out),
        "<h2>Definitions</h2>",
        _definitions_html(summary.straggler_rule),
        '<p>Tables: <a href="asu.md">asu.md</a>, <a href="asu.json">asu.json</a>.</p>',
    ]
    if run.info.scenario_text:
        body.append(
            f"<details><summary>Scenario</summary><pre>{html.escape(run.info.scenario_text)}</pre></details>"
        )
    index = out / "index.html"
    index.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return index


def build_report(path: Path, out_dir: Path) -> Path:
    """``rllmtop report FILE --out DIR``: the report of one recording; returns ``DIR/index.html``."""
    _matplotlib()
    return write_report(load_run(path), out_dir)


# ============================================================================================ compare


_WORKLOAD_IGNORED = ("engine", "matrix", "name", "description", "model", "slo", "scrape_interval", "seed")


def _base_name(name: str) -> str:
    return re.sub(r"\[[^\]]*\]$", "", name)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


_WORKLOAD_OVERRIDES = {
    "--request-rate": "arrival.rate",
    "--burstiness": "arrival.burstiness",
    "--max-concurrency": "load.max_concurrency",
    "--num-prompts": "load.num_prompts",
    "--duration": "load.duration",
}
"""Command-line overrides that change the workload (``--seed`` is compared through SessionInfo.seed; engine
overrides such as ``--profile``/``--speed`` may differ)."""


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _overrides(header: str) -> dict[str, Any]:
    """``--flag value --flag value`` (as the scenario loader writes it) -> {flag: value}."""
    out: dict[str, Any] = {}
    flag = None
    for tok in header.split():
        if tok.startswith("--"):
            flag = tok
            out[flag] = ""
        elif flag is not None:
            out[flag] = (str(out[flag]) + " " + tok).strip()
    return {k: _value(str(v)) for k, v in out.items()}


def _workload(text: str) -> dict[str, Any] | None:
    """The effective workload of a recorded scenario: its arrival/load/classes tables (flattened), with the
    workload overrides of the command line applied. None when the text is not TOML."""
    try:
        raw = tomllib.loads(_strip_header(text))
    except tomllib.TOMLDecodeError:
        return None
    flat = _flatten({k: v for k, v in raw.items() if k not in _WORKLOAD_IGNORED})
    for flag, value in _overrides(_header_fields(text).get("overrides", "")).items():
        key = _WORKLOAD_OVERRIDES.get(flag)
        if key is not None:
            flat[key] = value
            if flag == "--burstiness":
                flat["arrival.process"] = "gamma"
    return flat


def comparability_problems(runs: Sequence[RunData]) -> list[str]:
    """Why these runs did not drive the same workload (empty: comparable). See the module docstring."""
    problems: list[str] = []
    if not runs:
        return problems
    a = runs[0]
    ia = a.info
    ha = _header_fields(ia.scenario_text)
    for b in runs[1:]:
        ib = b.info
        hb = _header_fields(ib.scenario_text)
        who = f"{b.label} vs {a.label}"
        same_matrix = (
            "matrix cell" in ha
            and "matrix cell" in hb
            and _strip_header(ia.scenario_text) == _strip_header(ib.scenario_text)
            and ha.get("overrides") == hb.get("overrides")
        )
        if same_matrix:
            continue  # cells of one matrix: what differs is the declared cell
        if _base_name(ia.scenario_name) != _base_name(ib.scenario_name):
            problems.append(f"{who}: scenario {ib.scenario_name!r} vs {ia.scenario_name!r}")
        if ia.seed != ib.seed:
            problems.append(f"{who}: seed {ib.seed} vs {ia.seed}")
        wa, wb = _workload(ia.scenario_text), _workload(ib.scenario_text)
        if wa is not None and wb is not None and wa != wb:
            keys = sorted(k for k in set(wa) | set(wb) if wa.get(k) != wb.get(k))
            shown = ", ".join(f"{k} = {wb.get(k, '(unset)')!r} vs {wa.get(k, '(unset)')!r}" for k in keys[:4])
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            problems.append(f"{who}: workload differs: {shown}{more}")
    return problems


_DELTA_METRICS: tuple[tuple[str, Callable[[ClassSummary], float | None], str], ...] = (
    ("tok/s", lambda c: c.output_tps, "rate"),
    ("TTFVT p50", lambda c: c.ttfvt[50], "s"),
    ("TTFVT p99", lambda c: c.ttfvt[99], "s"),
    ("E2E p50", lambda c: c.e2e[50], "s"),
    ("E2E p99", lambda c: c.e2e[99], "s"),
    ("reason p50", lambda c: c.reasoning_len[50], "tok"),
    ("reason p99", lambda c: c.reasoning_len[99], "tok"),
    ("acc", lambda c: c.accuracy, "frac"),
    ("err", lambda c: c.error_rate, "frac"),
    ("strag", lambda c: float(c.stragglers), "tok"),
)
"""Numbers shown with their change against the baseline (all read from ClassSummary)."""


def _delta_cell(v: float | None, b: float | None, kind: str) -> str:
    if kind == "s":
        shown = _seconds(v)
    elif kind == "frac":
        shown = _pct(v)
    else:
        shown = _num(v, "{:.0f}")
    if v is None or b is None:
        return shown
    if kind == "frac":
        return f"{shown} ({100 * (v - b):+.1f} pp)"
    if b == 0:
        return shown if v == 0 else f"{shown} (from 0)"
    return f"{shown} ({100 * (v - b) / b:+.0f}%)"


_TESTED: tuple[tuple[str, Callable[[RequestRecord], float | None]], ...] = (
    ("E2E", lambda q: q.e2e),
    ("TTFVT", lambda q: q.ttfvt),
    ("reasoning length", lambda q: float(q.reasoning_tokens)),
)


@dataclass(frozen=True)
class _Test:
    cls: str
    metric: str
    run: str
    baseline: str
    result: MannWhitney
    p_holm: float | None = None


def _class_names(runs: Sequence[_Run]) -> list[str]:
    names: dict[str, None] = {}
    for r in runs:
        for c in r.summary.classes:
            names.setdefault(c.name, None)
    out = list(names)
    if len(out) != 1:
        out.append("all")
    return out


def _tests(runs: Sequence[_Run], classes: Sequence[str]) -> list[_Test]:
    base = runs[0]
    out: list[_Test] = []
    for cls in classes:
        pick = (lambda q: True) if cls == "all" else (lambda q, c=cls: q.cls == c)  # type: ignore[misc]
        for metric, get in _TESTED:
            a = [v for q in base.ok if pick(q) and (v := get(q)) is not None]
            for r in runs[1:]:
                b = [v for q in r.ok if pick(q) and (v := get(q)) is not None]
                out.append(_Test(cls, metric, r.label, base.label, mann_whitney(a, b)))
    adjusted = holm([t.result.p for t in out])
    return [replace(t, p_holm=p) for t, p in zip(out, adjusted, strict=True)]


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    return "<0.0001" if v < 1e-4 else f"{v:.4f}"


_TEST_RIGHT = (False, False, False, *([True] * 6), False)
_TEST_HEAD = ("class", "metric", "run vs baseline", "n", "median", "U", "p", "p (Holm)", "P(run > base)", "")


def _test_row(t: _Test) -> list[str]:
    m = t.result
    fmt = _seconds if t.metric != "reasoning length" else (lambda v: _num(v, "{:.0f}"))
    verdict = "" if t.p_holm is None else ("significant" if t.p_holm < 0.05 else "n.s.")
    return [
        t.cls,
        t.metric,
        f"{t.run} vs {t.baseline}",
        f"{m.n_b} / {m.n_a}",
        f"{fmt(m.median_b)} / {fmt(m.median_a)}",
        _num(m.u, "{:.0f}"),
        _p(m.p),
        _p(t.p_holm),
        _num(m.effect, "{:.2f}"),
        verdict,
    ]


def _unique_labels(runs: Sequence[RunData]) -> list[RunData]:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    out = []
    for r in runs:
        if seen[r.label] > 1:
            tag = r.path.stem if r.path is not None else r.info.session_id
            out.append(replace(r, label=f"{r.label} [{tag}]"))
        else:
            out.append(r)
    return out


def _side_by_side(runs: Sequence[_Run], cls: str) -> list[ClassSummary]:
    rows = []
    for r in runs:
        c = r.summary.by_name().get(cls)
        if c is not None:
            rows.append(replace(c, name=r.label))
    return rows


def write_comparison(
    runs: Sequence[RunData], out_dir: str | Path, *, force: bool = False, rule: StragglerRule | None = None
) -> Path:
    """Compare runs (the first is the baseline); refuses non-comparable runs unless ``force``."""
    if len(runs) < 2:
        raise UserError("compare needs at least two recordings", "rllmtop compare A.db B.db")
    problems = comparability_problems(runs)
    if problems and not force:
        raise UserError(
            "these recordings are not comparable (different workload): " + "; ".join(problems),
            "compare runs of the same scenario and seed, or pass --force to compare anyway",
        )
    rule = rule or StragglerRule()
    _matplotlib()
    out = _prepare_out(Path(out_dir))
    derived, gstep, cstep = _derive(_unique_labels(runs), rule)
    ctx = _Ctx(derived, gstep, cstep, rule)
    figs = _draw_figures(ctx, out)
    base = derived[0]
    classes = _class_names(derived)
    tests = _tests(derived, classes)
    run_col = Column("run", lambda c: c.name, "the recording (baseline first)", right=False)
    columns = (run_col, *COLUMNS[1:])

    names = dict.fromkeys(_base_name(r.data.info.scenario_name) or r.label for r in derived)
    title = "rllmtop comparison: " + ", ".join(names)
    runs_head = ["run", "recording", "scenario", "seed", "engine", "status"]
    runs_rows = [
        [
            r.label,
            str(r.data.path) if r.data.path else "-",
            r.data.info.scenario_name or "-",
            "-" if r.data.info.seed is None else str(r.data.info.seed),
            " ".join(
                x for x in (r.data.info.engine_kind, r.data.info.engine_version, r.data.info.model) if x
            ),
            r.data.status,
        ]
        for r in derived
    ]
    eng_rows = [_engine_row(r, None if r is base else base) for r in derived]
    delta_head = ["run", *(m[0] for m in _DELTA_METRICS)]

    def delta_rows(cls: str) -> list[list[str]]:
        b = base.summary.by_name().get(cls)
        rows = []
        for r in derived:
            c = r.summary.by_name().get(cls)
            if c is None:
                continue
            rows.append(
                [r.label]
                + [
                    _delta_cell(get(c), None if (r is base or b is None) else get(b), kind)
                    for _, get, kind in _DELTA_METRICS
                ]
            )
        return rows

    verdict = (
        "The runs drove the same workload (same scenario, seed, arrival/load/class tables and overrides; "
        "engine settings may differ)."
        if not problems
        else "NOT comparable, compared anyway (--force): " + "; ".join(problems)
    )
    md: list[str] = [f"# {title}", "", verdict, "", _md_table(runs_head, runs_rows, [False] * 6), ""]
    md += [f"Baseline: **{base.label}**. Changes are relative to it (pp = percentage points).", ""]
    md += [
        "## Engine",
        "",
        _md_table(list(_ENGINE_HEAD), eng_rows, _ENGINE_RIGHT),
        "",
        _engine_note(gstep),
        "",
    ]
    html_body: list[str] = [
        f'<p class="{"note" if problems else ""}">{html.escape(verdict)}</p>',
        _html_table(runs_head, runs_rows, [False] * 6),
        f"<p>Baseline: <b>{html.escape(base.label)}</b>. Changes are relative to it (pp = percentage points).</p>",
        "<h2>Engine</h2>",
        _html_table(list(_ENGINE_HEAD), eng_rows, _ENGINE_RIGHT),
        f"<p>{html.escape(_engine_note(gstep))}</p>",
    ]
    for cls in classes:
        head, rows, right = _columns_table(columns, _side_by_side(derived, cls))
        d_rows = delta_rows(cls)
        md += [
            f"## Class {cls}",
            "",
            _md_table(head, rows, right),
            "",
            "Changes:",
            "",
            _md_table(delta_head, d_rows),
            "",
        ]
        html_body += [
            f"<h2>Class {html.escape(cls)}</h2>",
            _html_table(head, rows, right),
            "<p>Changes against the baseline:</p>",
            _html_table(delta_head, d_rows),
        ]
    test_rows = [_test_row(t) for t in tests]
    test_note = (
        "Two-sided Mann-Whitney U test of each run against the baseline, over requests that finished ok; "
        "n and median are run / baseline; U is the run's statistic; P(run > base) is the common-language "
        "effect size (0.5 = no shift); p (Holm) is adjusted for all tests in this comparison; significant = "
        f"p (Holm) < 0.05; '-' = fewer than {MIN_TEST_N} values."
    )
    md += ["## Significance", "", _md_table(list(_TEST_HEAD), test_rows, _TEST_RIGHT), "", test_note, ""]
    md += ["## Definitions", "", _definitions_md(base.summary.straggler_rule), "", "## Figures", ""]
    md += [f"- [{f.title}]({f.png.name}) ([SVG]({f.svg.name})): {f.caption}" for f in figs]
    (out / "compare.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    key_cls = classes[-1]  # "all" (or the only class)
    k_head, k_rows, k_right = _columns_table(columns, _side_by_side(derived, key_cls))
    txt = [
        verdict,
        f"baseline: {base.label}",
        "",
        "engine:",
        _text_table(list(_ENGINE_HEAD), eng_rows, _ENGINE_RIGHT),
        "",
        f"class {key_cls}:",
        _text_table(k_head, k_rows, k_right),
        "",
        f"class {key_cls}, changes against {base.label}:",
        _text_table(delta_head, delta_rows(key_cls)),
        "",
        f"class {key_cls}, Mann-Whitney U against {base.label} (p Holm-adjusted over all {len(tests)} tests):",
        _text_table(
            list(_TEST_HEAD),
            [row for t, row in zip(tests, test_rows, strict=True) if t.cls == key_cls],
            _TEST_RIGHT,
        ),
        "",
        f"stragglers: {base.summary.straggler_rule}",
    ]
    (out / "compare.txt").write_text("\n".join(txt) + "\n", encoding="utf-8")
    html_body += [
        "<h2>Significance</h2>",
        _html_table(list(_TEST_HEAD), test_rows, _TEST_RIGHT),
        f"<p>{html.escape(test_note)}</p>",
        "<h2>Figures</h2>",
        _figures_html(figs, out),
        "<h2>Definitions</h2>",
        _definitions_html(base.summary.straggler_rule),
        '<p>Tables: <a href="compare.md">compare.md</a>, <a href="compare.json">compare.json</a>, '
        '<a href="compare.txt">compare.txt</a>.</p>',
    ]
    _write_json(
        out / "compare.json",
        {
            "comparable": not problems,
            "problems": problems,
            "baseline": base.label,
            "straggler_rule": base.summary.straggler_rule,
            "definitions": dict(DEFINITIONS),
            "engine_note": _engine_note(gstep),
            "runs": [
                {
                    "label": r.label,
                    "recording": str(r.data.path) if r.data.path else None,
                    "scenario": r.data.info.scenario_name,
                    "seed": r.data.info.seed,
                    "status": r.data.status,
                    "engine": r.engine.as_dict(),
                    "overall": r.summary.overall.as_dict(),
                    "classes": [c.as_dict() for c in r.summary.classes],
                }
                for r in derived
            ],
            "tests": [
                {
                    "class": t.cls,
                    "metric": t.metric,
                    "run": t.run,
                    "baseline": t.baseline,
                    **t.result.as_dict(),
                    "p_holm": t.p_holm,
                }
                for t in tests
            ],
            "figures": {f.name: {"png": f.png.name, "svg": f.svg.name, "caption": f.caption} for f in figs},
        },
    )
    index = out / "index.html"
    index.write_text(_page(title, "\n".join(html_body)), encoding="utf-8")
    return index


def build_comparison(paths: Sequence[Path], out_dir: Path, *, force: bool) -> Path:
    """``rllmtop compare A.db B.db ...``: the first recording is the baseline; returns ``DIR/index.html``."""
    if len(paths) < 2:
        raise UserError("compare needs at least two recordings", "rllmtop compare A.db B.db")
    _matplotlib()
    return write_comparison([load_run(p) for p in paths], out_dir, force=force)
