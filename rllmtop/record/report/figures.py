"""The report's figures, each drawn for one run or overlaid for several (one colour per run).

Matplotlib is optional (``pip install 'rllmtop[report]'``); it is imported only here, with no global
backend change (figures are rendered with ``Figure`` + Agg). Every time axis says its clock.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllmtop.errors import UserError
from rllmtop.events import RequestRecord
from rllmtop.metrics.analysis import BATCH_RUN_TIME, KV_FULL, StragglerRule
from rllmtop.record.report.run import Derived, clock_label
from rllmtop.record.report.tables import DEFINITIONS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "RUN_FIGURES",
    "Ctx",
    "FigureOut",
    "draw_figures",
    "draw_request_timeline",
    "matplotlib_figure",
]

FIGURES: tuple[str, ...] = (
    "kv_usage",
    "running_waiting",
    "run_time",
    "reasoning_length",
    "latency_cdfs",
    "arrivals",
)
"""Figure file stems, in page order (each written as ``<stem>.png`` and ``<stem>.svg``)."""

RUN_FIGURES: tuple[str, ...] = ("request_timeline",)
"""Figures of a single run's report only (not of a comparison): the per-request timeline."""

STRAGGLER = "#d62728"  # behind its batch
CLASS_STRAGGLER = "#f4a261"  # behind its class only


def matplotlib_figure() -> Any:
    """matplotlib's ``Figure`` class, or a UserError saying how to install it."""
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
class FigureOut:
    name: str
    title: str
    caption: str
    png: Path
    svg: Path


@dataclass(frozen=True)
class Ctx:
    runs: list[Derived]
    gstep: float
    cstep: float
    rule: StragglerRule

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    @property
    def unit(self) -> str:
        """The time unit of every run ("s" on the wall clock, "simulated s" in a time-lapse run)."""
        units = {clock_label(r.data.info) for r in self.runs}
        return units.pop() if len(units) == 1 else "session s"

    @property
    def axis_unit(self) -> str:
        """The unit an axis of times shows, naming the clock: "s, wall clock" or "simulated s"."""
        return "s, wall clock" if self.unit == "s" else self.unit


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")


def _time_axis(ax: Axes, ctx: Ctx) -> None:
    ax.set_xlabel(f"time since load start ({ctx.axis_unit})")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)


def _short(text: str, n: int = 28) -> str:
    """A run label as a legend shows it: long labels squeeze the axes to nothing (matplotlib's
    "constrained_layout not applied"), so they are cut; the tables show them whole."""
    return text if len(text) <= n else text[: n - 1] + "…"


def _legend(ax: Axes, **kw: Any) -> None:
    """A legend only when something is labelled (an empty one warns)."""
    _handles, labels = ax.get_legend_handles_labels()
    if any(not lab.startswith("_") for lab in labels):
        ax.legend(fontsize=kw.pop("fontsize", "small"), **kw)


def _fig_kv_usage(fig: Figure, ctx: Ctx) -> str:
    ax, axp = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    any_kv = False
    width = ctx.cstep / (len(ctx.runs) + 1)
    fleet_note = ""
    for i, r in enumerate(ctx.runs):
        assert r.tl_gauge is not None and r.tl_count is not None
        kv = r.tl_gauge.columns["kv_cache_usage"]
        pre = r.tl_count.columns["preemptions"]
        served = bool(np.any(~np.isnan(kv)))
        any_kv = any_kv or served
        npre = r.engine.preemptions
        pre_txt = "preemptions not served" if npre is None else f"{npre:.0f} preemptions"
        fleet = f"fleet of {r.engine.engines}, " if r.engine.engines > 1 else ""
        label = (
            f"{_short(r.label)} ({fleet}{pre_txt})" if served else f"{_short(r.label)} (KV usage not served)"
        )
        if ctx.single and r.tl_engines:
            for k, (eid, tl) in enumerate(r.tl_engines.items()):
                ax.plot(
                    r.x(tl),
                    100 * tl.columns["kv_cache_usage"],
                    lw=0.8,
                    alpha=0.7,
                    color=PALETTE_ENGINES[k % len(PALETTE_ENGINES)],
                    label=f"engine {eid}" if k < 8 else "_nolegend_",
                )
            fleet_note = f" Thin lines: each engine; thick: the fleet ({r.engine.kv_weighting})."
        ax.plot(r.x(r.tl_gauge), 100 * kv, color=r.color, lw=1.6, label=label)
        if not np.all(np.isnan(pre)):
            xs = r.x(r.tl_count) - ctx.cstep / 2 + (i + 0.5) * width
            axp.bar(xs, np.nan_to_num(pre), width=width, color=r.color, align="edge")
    ax.axhline(100 * KV_FULL, color="#999999", ls=":", lw=0.8)
    ax.set_ylabel("KV-cache usage (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    _legend(ax, loc="best")
    if not any_kv:
        _no_data(ax, "the engine did not serve KV-cache usage")
    ax.set_title("KV-cache usage over time")
    axp.set_ylabel(f"preemptions\nper {ctx.cstep:g} {ctx.unit}")
    _time_axis(axp, ctx)
    return (
        f"KV-cache usage (%) as the engine reported it: last reading in each {ctx.gstep:g} {ctx.unit} window "
        f"(dotted line: {100 * KV_FULL:.0f}%).{fleet_note} Below: recompute preemptions counted in "
        f"{ctx.cstep:g} {ctx.unit} windows."
    )


PALETTE_ENGINES = ("#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d")


def _fig_running_waiting(fig: Figure, ctx: Ctx) -> str:
    ax_r, ax_w = fig.subplots(2, 1, sharex=True)
    for r in ctx.runs:
        assert r.tl_gauge is not None
        x = r.x(r.tl_gauge)
        ax_r.plot(x, r.tl_gauge.columns["requests_running"], color=r.color, lw=1.3, label=_short(r.label))
        ax_w.plot(x, r.tl_gauge.columns["requests_waiting"], color=r.color, lw=1.3, label=_short(r.label))
    ax_r.set_title("Requests running and waiting in the engine")
    ax_r.set_ylabel("running (requests)")
    ax_w.set_ylabel("waiting (requests)")
    for ax in (ax_r, ax_w):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    _legend(ax_r, loc="upper right")
    _time_axis(ax_w, ctx)
    fleet = " Summed over the fleet's engines." if any(r.engine.engines > 1 for r in ctx.runs) else ""
    return (
        f"Engine gauges: requests in the running batch and in the waiting queue (last reading in each "
        f"{ctx.gstep:g} {ctx.unit} window).{fleet}"
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


def _fig_run_time(fig: Figure, ctx: Ctx) -> str:
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
        any_strag = False
        for r, e2e in zip(ctx.runs, all_e2e, strict=True):
            if not e2e.size:
                continue
            x, y = _ecdf(e2e)
            order = np.argsort(e2e, kind="stable")
            codes = r.codes[order]
            batch = codes == BATCH_RUN_TIME
            cls_only = (codes > 0) & ~batch
            ax_c.step(
                *_thin(x, y), where="post", color=r.color, lw=1.4, label=f"{_short(r.label)} (n={e2e.size})"
            )
            for m, col in ((batch, STRAGGLER), (cls_only, CLASS_STRAGGLER)):
                if m.any():
                    any_strag = True
                    ax_c.scatter(x[m], y[m], s=18, marker="o", facecolors="none", edgecolors=col, zorder=3)
            flag_b = r.codes == BATCH_RUN_TIME
            flag_c = (r.codes > 0) & ~flag_b
            if ctx.single:
                ax_h.hist(
                    [e2e[r.codes == 0], e2e[flag_c], e2e[flag_b]],
                    bins=bins,
                    stacked=True,
                    color=[r.color, CLASS_STRAGGLER, STRAGGLER],
                    label=[
                        "requests",
                        f"stragglers: behind their class ({int(flag_c.sum())})",
                        f"stragglers: behind their batch ({int(flag_b.sum())})",
                    ],
                )
            else:
                ax_h.hist(e2e, bins=bins, histtype="step", lw=1.4, color=r.color, label=_short(r.label))
                n_s = int((r.codes > 0).sum())
                if n_s:
                    ax_h.plot(
                        e2e[r.codes > 0],
                        np.zeros(n_s),
                        "|",
                        ms=12,
                        mew=1.5,
                        color=r.color,
                        clip_on=False,
                        label=f"stragglers of {_short(r.label)} ({n_s})",
                    )
        if any_strag:
            ax_c.scatter(
                [], [], s=18, marker="o", facecolors="none", edgecolors=STRAGGLER, label="behind their batch"
            )
            ax_c.scatter(
                [],
                [],
                s=18,
                marker="o",
                facecolors="none",
                edgecolors=CLASS_STRAGGLER,
                label="behind their class",
            )
        _legend(ax_c, loc="lower right")
        _legend(ax_h, loc="upper right")
    ax_c.set_title("Run time (E2E): CDF")
    ax_c.set_xlabel(f"E2E run time ({ctx.axis_unit})")
    ax_c.set_ylabel("fraction of finished requests")
    ax_c.set_ylim(0, 1.02)
    ax_h.set_title("Run time (E2E): histogram")
    ax_h.set_xlabel(f"E2E run time ({ctx.axis_unit})")
    ax_h.set_ylabel("requests")
    for ax in (ax_c, ax_h):
        ax.grid(True, alpha=0.3)
    scale = " Log x when the runs differ by more than 50x." if not ctx.single else ""
    return (
        f"Run time of requests that finished ok.{scale} Stragglers are marked: red, far behind their batch "
        f"(the tail); orange, far behind their class only. Straggler: {ctx.rule.describe()}."
    )


_DIFF_ORDER = {"easy": 0, "medium": 1, "hard": 2, "mcq": 3}


def _groups(runs: Sequence[Derived]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], tuple[int, int, int]] = {}
    cls_order: dict[str, int] = {}
    for r in runs:
        for q in r.ok:
            cls_order.setdefault(q.cls, len(cls_order))
            key = (q.cls, q.difficulty)
            if key not in seen:
                seen[key] = (_DIFF_ORDER.get(q.difficulty or q.cls, 9), cls_order[q.cls], len(seen))
    return sorted(seen, key=lambda k: seen[k])


def _fig_reasoning(fig: Figure, ctx: Ctx) -> str:
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
        ax.plot([], [], "s", color=r.color, label=f"{_short(r.label)} (median {med:.0f} tok)")
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
    _legend(ax, loc="best")
    return (
        "Reasoning tokens per request that finished ok: box = quartiles, line = median, whiskers = 1.5 IQR, "
        "dots = outliers."
    )


def _fig_latency(fig: Figure, ctx: Ctx) -> str:
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
            ax.step(
                *_thin(x, y), where="post", color=r.color, lw=1.4, label=f"{_short(r.label)} (n={vals.size})"
            )
            plotted = True
            pos = vals[vals > 0]
            if pos.size:
                lo, hi = min(lo, float(pos.min())), max(hi, float(pos.max()))
        if not plotted:
            _no_data(ax, f"no {name}")
        elif lo > 0 and hi / lo > 50:
            ax.set_xscale("log")
        ax.set_title(f"{name} CDF")
        ax.set_xlabel(f"{name} ({ctx.axis_unit})")
        ax.grid(True, alpha=0.3, which="both")
        if plotted:
            _legend(ax, loc="lower right", fontsize="x-small")
    axes[0].set_ylabel("fraction of finished requests")
    axes[0].set_ylim(0, 1.02)
    return (
        "Latency CDFs over requests that finished ok (log scale when values span more than 50x). "
        + " ".join(f"{k}: {v}." for k, v in DEFINITIONS[:3])
    )


def _fig_arrivals(fig: Figure, ctx: Ctx) -> str:
    ax_a, ax_c = fig.subplots(2, 1, sharex=True)
    w = ctx.cstep
    for k, r in enumerate(ctx.runs):
        assert r.tl_count is not None
        x = r.x(r.tl_count)
        cols = r.tl_count.columns
        if ctx.single:
            ax_a.bar(x, cols["arrivals"] / w, width=w * 0.9, color=r.color, label="sent")
        else:
            ls = ("-", "--", ":", "-.")[k % 4]  # identical schedules stay visible
            ax_a.step(
                x, cols["arrivals"] / w, where="mid", color=r.color, lw=1.3, ls=ls, label=_short(r.label)
            )
        ax_c.step(
            x,
            cols["completions"] / w,
            where="mid",
            color=r.color,
            lw=1.3,
            label=f"{_short(r.label)} completed",
        )
        err = cols["errors"]
        if np.any(err > 0):
            ax_c.plot(x[err > 0], err[err > 0] / w, "x", color=STRAGGLER, label=f"{_short(r.label)} errors")
    ax_a.set_title("Arrivals and completions")
    ax_a.set_ylabel(f"sent (req/s,\n{w:g} {ctx.unit} windows)")
    ax_c.set_ylabel(f"ended (req/s,\n{w:g} {ctx.unit} windows)")
    for ax in (ax_a, ax_c):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        _legend(ax, loc="upper right")
    _time_axis(ax_c, ctx)
    return (
        f"Requests sent (top) and ended (bottom: completed ok; errors as red crosses) per second, "
        f"counted in {w:g} {ctx.unit} windows."
    )


_FIGURE_SPECS: tuple[tuple[str, str, tuple[float, float], Callable[[Figure, Ctx], str]], ...] = (
    ("kv_usage", "KV-cache usage over time", (10, 5.5), _fig_kv_usage),
    ("running_waiting", "Running and waiting requests", (10, 5.5), _fig_running_waiting),
    ("run_time", "Run-time distribution", (12, 4.8), _fig_run_time),
    ("reasoning_length", "Reasoning length by class and difficulty", (10, 5), _fig_reasoning),
    ("latency_cdfs", "TTFT, TTFVT and E2E CDFs", (13, 4.5), _fig_latency),
    ("arrivals", "Arrivals timeline", (10, 5), _fig_arrivals),
)

# Matplotlib says this when a figure is too small for its labels: the layout engine then leaves the
# axes where they are, which is a readable figure, not a failure; nothing for a user to act on.
_LAYOUT_WARNINGS = ("constrained_layout not applied", "layout not applied")


def draw_figures(ctx: Ctx, out_dir: Path) -> list[FigureOut]:
    """Draw every figure of :data:`FIGURES` into ``out_dir`` (PNG and SVG)."""
    figure_cls = matplotlib_figure()
    out: list[FigureOut] = []
    for name, title, size, draw in _FIGURE_SPECS:
        with warnings.catch_warnings():
            for msg in _LAYOUT_WARNINGS:
                warnings.filterwarnings("ignore", message=msg, category=UserWarning)
            fig = figure_cls(figsize=size, layout="constrained")
            caption = draw(fig, ctx)
            png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
            fig.savefig(png, dpi=100, metadata={"Software": None})
            fig.savefig(svg, metadata={"Date": None})
        out.append(FigureOut(name, title, caption, png, svg))
    return out


def draw_request_timeline(ctx: Ctx, out_dir: Path) -> FigureOut:
    """The per-request timeline of the (single) run: a PNG by matplotlib, and an SVG with a hover title
    per request (:mod:`rllmtop.record.report.timeline`)."""
    from rllmtop.record.report.timeline import draw_timeline, timeline_data, timeline_svg

    figure_cls = matplotlib_figure()
    r = ctx.runs[0]
    td = timeline_data(r, ctx.axis_unit)
    rows = td.rows
    height = 4.5 + min(rows, 120) * 0.06
    with warnings.catch_warnings():
        for msg in _LAYOUT_WARNINGS:
            warnings.filterwarnings("ignore", message=msg, category=UserWarning)
        fig = figure_cls(figsize=(12, height), layout="constrained")
        caption = draw_timeline(fig, td)
        png, svg = out_dir / "request_timeline.png", out_dir / "request_timeline.svg"
        fig.savefig(png, dpi=100, metadata={"Software": None})
    timeline_svg(td, svg, f"Requests over time: {r.label}")
    return FigureOut("request_timeline", "Request timeline (Gantt)", caption, png, svg)
