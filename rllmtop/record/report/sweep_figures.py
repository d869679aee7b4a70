"""The figures and the page of a sweep report: load level against what the engine served.

``sweep_levels``: offered load (rate or concurrency) against completed and good requests/s, TTFVT and
E2E p99 (with the SLO limits), KV usage (mean and peak) and preemptions, the knee and the answer marked;
``sweep_pareto``: service throughput against TTFVT p99, one point per level, the Pareto front joined.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllmtop.metrics.analysis import KNEE_RULE, KV_FULL
from rllmtop.record.report.figures import _LAYOUT_WARNINGS, FigureOut, _legend, matplotlib_figure
from rllmtop.record.report.html import figures_html, page

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rllmtop.record.sweep import Answer, SweepLevel
    from rllmtop.summary import Table

__all__ = ["SWEEP_FIGURES", "SweepFigures", "draw_sweep_figures", "sweep_page"]

SWEEP_FIGURES = ("sweep_levels", "sweep_pareto")

MET = "#2ca02c"
MISSED = "#ff7f0e"
STOPPED = "#d62728"
C_DONE = "#1f77b4"
C_GOOD = "#2ca02c"


@dataclass(frozen=True)
class SweepFigures:
    levels: Sequence[SweepLevel]
    axis: str  # "rate" | "concurrency"
    slo: Mapping[str, float]
    best: SweepLevel | None
    knee: SweepLevel | None
    clock: str = "wall"
    speed: float = 1.0

    @property
    def ordered(self) -> list[SweepLevel]:
        return sorted(self.levels, key=lambda x: x.value)

    @property
    def unit(self) -> str:
        return "simulated s" if self.clock == "simulated" else "s, wall clock"

    @property
    def per(self) -> str:
        """'per second' in words naming the clock."""
        return "per simulated second" if self.clock == "simulated" else "per second"

    @property
    def x_label(self) -> str:
        if self.axis == "rate":
            return f"offered load (requests {self.per}: the level's request rate)"
        return "offered load (client concurrency cap: requests in flight)"


def _arr(levels: Sequence[SweepLevel], name: str) -> np.ndarray:
    return np.array([np.nan if getattr(x, name) is None else float(getattr(x, name)) for x in levels])


def _verdict_color(lvl: SweepLevel) -> str:
    return STOPPED if lvl.stopped_early else (MET if lvl.meets_slo else MISSED)


def _marks(ax: Axes, sf: SweepFigures, label: bool) -> None:
    """The knee and the answer as vertical lines."""
    if sf.knee is not None:
        ax.axvline(sf.knee.value, color="#7f7f7f", ls="--", lw=1.0, label="knee" if label else "_nolegend_")
    if sf.best is not None:
        ax.axvline(
            sf.best.value,
            color=MET,
            ls=":",
            lw=1.6,
            label="highest level meeting the SLOs" if label else "_nolegend_",
        )


def _x_scale(ax: Axes, sf: SweepFigures) -> None:
    xs = [x.value for x in sf.levels if x.value > 0]
    if xs and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(xs)))
        ax.set_xticklabels([f"{v:g}" for v in sorted(set(xs))])
        ax.minorticks_off()


def _verdict_points(ax: Axes, sf: SweepFigures, x: np.ndarray, y: np.ndarray) -> None:
    for lvl, xi, yi in zip(sf.ordered, x, y, strict=True):
        if not math.isfinite(yi):
            continue
        c = _verdict_color(lvl)
        if lvl.stopped_early:
            ax.plot(xi, yi, "x", color=c, ms=9, mew=2, zorder=4)
        elif lvl.meets_slo:
            ax.plot(xi, yi, "o", color=c, ms=7, zorder=4)
        else:
            ax.plot(xi, yi, "o", mfc="white", mec=c, mew=1.8, ms=7, zorder=4)


def _fig_levels(fig: Figure, sf: SweepFigures) -> str:
    ax_t, ax_l, ax_k, ax_p = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 2, 1.6]})
    lv = sf.ordered
    x = np.array([v.value for v in lv])
    done = _arr(lv, "request_throughput")
    good = _arr(lv, "goodput_rps")
    ax_t.plot(x, done, "-", color=C_DONE, lw=1.4, label="completed requests/s")
    if np.any(~np.isnan(good)):
        ax_t.plot(
            x, good, "-", color=C_GOOD, lw=1.8, label="goodput (requests/s meeting every per-request SLO)"
        )
        _verdict_points(ax_t, sf, x, good)
    else:
        _verdict_points(ax_t, sf, x, done)
    if sf.axis == "rate" and x.size:
        ax_t.plot(x, x, ":", color="#999999", lw=1, label="offered rate")
    ax_t.set_ylabel(f"requests {sf.per}")
    ax_t.set_ylim(bottom=0)
    ax_t.set_title("Load sweep: what the engine served at each load level")
    # the legend's verdict symbols
    ax_t.plot([], [], "o", color=MET, label="level met the SLOs")
    ax_t.plot([], [], "o", mfc="white", mec=MISSED, mew=1.8, label="level missed an SLO")
    ax_t.plot([], [], "x", color=STOPPED, mew=2, label="stopped early (over-saturated)")
    _marks(ax_t, sf, label=True)
    _legend(ax_t, loc="upper left", fontsize="x-small", ncol=2)

    lat = {
        "TTFVT p99": _arr(lv, "ttfvt_p99"),
        "E2E p99": _arr(lv, "e2e_p99"),
        "TTFVT p50": _arr(lv, "ttfvt_p50"),
    }
    styles = {"TTFVT p99": ("#9467bd", "-"), "E2E p99": ("#8c564b", "-"), "TTFVT p50": ("#9467bd", "--")}
    vals = np.concatenate([v[~np.isnan(v)] for v in lat.values()] + [np.empty(0)])
    for name, v in lat.items():
        col, ls = styles[name]
        if np.any(~np.isnan(v)):
            ax_l.plot(x, v, ls, color=col, lw=1.4, marker=".", label=name)
    for key, limit in sf.slo.items():
        metric, _, stat = key.rpartition("_")
        if metric in ("ttfvt", "e2e", "ttft") and stat.startswith("p"):
            ax_l.axhline(limit, color=STOPPED, ls="-.", lw=1, label=f"SLO {key} = {limit:g} s")
    pos = vals[vals > 0]
    if pos.size and pos.max() / pos.min() > 50:
        ax_l.set_yscale("log")
    else:
        ax_l.set_ylim(bottom=0)
    ax_l.set_ylabel(f"latency ({sf.unit})")
    _marks(ax_l, sf, label=False)
    _legend(ax_l, loc="upper left", fontsize="x-small", ncol=2)

    kv_mean, kv_peak = 100 * _arr(lv, "kv_mean"), 100 * _arr(lv, "kv_peak")
    if np.any(~np.isnan(kv_peak)):
        ax_k.plot(x, kv_peak, "-", color="#d62728", lw=1.2, marker=".", label="KV peak")
        ax_k.plot(
            x, kv_mean, "-", color="#1f77b4", lw=1.4, marker=".", label="KV mean (over the load window)"
        )
        ax_k.axhline(100 * KV_FULL, color="#999999", ls=":", lw=0.8)
        _legend(ax_k, loc="lower right", fontsize="x-small", ncol=2)
    else:
        ax_k.text(0.5, 0.5, "the engine did not serve KV usage", transform=ax_k.transAxes, ha="center")
    ax_k.set_ylim(0, 105)
    ax_k.set_ylabel("KV usage (%)")
    _marks(ax_k, sf, label=False)

    pre = _arr(lv, "preemptions")
    if np.any(~np.isnan(pre)):
        width = (np.diff(x).min() * 0.5) if x.size > 1 else 0.5
        if x.size and x.min() > 0 and x.max() / x.min() >= 8:  # log x: bars of equal look
            ax_p.vlines(x, 0, np.nan_to_num(pre), color="#8c564b", lw=6)
        else:
            ax_p.bar(x, np.nan_to_num(pre), width=width, color="#8c564b")
    else:
        ax_p.text(0.5, 0.5, "preemptions not served", transform=ax_p.transAxes, ha="center")
    ax_p.set_ylabel("preemptions\nper level")
    ax_p.set_ylim(bottom=0)
    _marks(ax_p, sf, label=False)
    ax_p.set_xlabel(sf.x_label)
    for ax in (ax_t, ax_l, ax_k, ax_p):
        ax.grid(True, alpha=0.3)
        _x_scale(ax, sf)
    knee = f"Knee (grey dashes) at {sf.knee.label}: {KNEE_RULE}." if sf.knee else f"No knee: {KNEE_RULE}."
    best = (
        f" Green dots: the highest level meeting the SLOs ({sf.best.label})." if sf.best is not None else ""
    )
    return (
        f"One point per load level, each a full recorded run. Top: completed and good requests {sf.per}. "
        f"Then TTFVT p50/p99 and E2E p99 ({sf.unit}) with the SLO limits, the engine's KV usage (mean over the "
        "load window, and the highest reading), and the preemptions counted in each level. Filled: the level "
        f"met the SLOs; hollow: it missed one; a cross: stopped early as over-saturated. {knee}{best}"
    )


def _pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower x, higher y), by x ascending."""
    ok = np.flatnonzero(~np.isnan(x) & ~np.isnan(y))
    front = []
    best_y = -math.inf
    for i in sorted(ok.tolist(), key=lambda k: (x[k], -y[k])):
        if y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return np.array(front, dtype=int)


def _fig_pareto(fig: Figure, sf: SweepFigures) -> str:
    ax = fig.subplots()
    lv = sf.ordered
    tt = _arr(lv, "ttfvt_p99")
    tps = _arr(lv, "output_tps")
    have = ~np.isnan(tt) & ~np.isnan(tps)
    if not have.any():
        ax.text(0.5, 0.5, "no level has both a TTFVT and a throughput", transform=ax.transAxes, ha="center")
    else:
        whole = np.array([x.status == "done" and not x.stopped_early for x in lv])  # ran to their end
        front = _pareto_front(np.where(whole, tt, np.nan), tps)
        if front.size:
            ax.plot(tt[front], tps[front], "-", color="#7f7f7f", lw=1.2, zorder=2, label="Pareto front")
        _verdict_points(ax, sf, tt, tps)
        for lvl, a, b in zip(lv, tt, tps, strict=True):
            if math.isfinite(a) and math.isfinite(b):
                ax.annotate(
                    lvl.label,
                    (a, b),
                    textcoords="offset points",
                    xytext=(6, 4),
                    fontsize="x-small",
                    color="#333333",
                )
        pos = tt[have & (tt > 0)]
        if pos.size and pos.max() / pos.min() > 10:
            ax.set_xscale("log")
        ax.margins(x=0.1, y=0.1)  # room for the labels of the outermost points
        top = float(np.nanmax(tt[have]))
        for key, limit in sf.slo.items():
            if not key.startswith("ttfvt_p"):
                continue
            if limit <= 2 * top:
                ax.axvline(limit, color=STOPPED, ls="-.", lw=1, label=f"SLO {key} = {limit:g} s")
            else:  # far right of every level: said in the legend, not drawn (it would squash the points)
                ax.plot(
                    [], [], ls="-.", color=STOPPED, lw=1, label=f"SLO {key} = {limit:g} s (beyond the axis)"
                )
        ax.plot([], [], "o", color=MET, label="met the SLOs")
        ax.plot([], [], "o", mfc="white", mec=MISSED, mew=1.8, label="missed an SLO")
        ax.plot([], [], "x", color=STOPPED, mew=2, label="stopped early")
        _legend(ax, loc="lower right", fontsize="small")
    ax.set_xlabel(f"TTFVT p99 ({sf.unit})")
    ax.set_ylabel(f"service throughput (output tokens {sf.per})")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title("Throughput against time to first visible token, one point per load level")
    return (
        f"Each point is a load level (labelled with its {'rate' if sf.axis == 'rate' else 'concurrency'}): "
        f"output tokens {sf.per} (reasoning + answer, of requests that ended) against TTFVT p99. The grey "
        "line joins the Pareto front: the levels no other level beats on both (more throughput and a lower "
        "TTFVT p99), among the levels that ran to their end (one stopped early measured only its start: its "
        "TTFVT counts only the requests that finished before the stop)."
    )


_SPECS = (
    (
        "sweep_levels",
        "Load sweep: served load, latency, KV usage and preemptions per level",
        (10, 11),
        _fig_levels,
    ),
    ("sweep_pareto", "Throughput against TTFVT p99 (Pareto)", (9, 6), _fig_pareto),
)


def draw_sweep_figures(sf: SweepFigures, out_dir: Path) -> list[FigureOut]:
    figure_cls = matplotlib_figure()
    out = []
    for name, title, size, draw in _SPECS:
        with warnings.catch_warnings():
            for msg in _LAYOUT_WARNINGS:
                warnings.filterwarnings("ignore", message=msg, category=UserWarning)
            fig = figure_cls(figsize=size, layout="constrained")
            caption = draw(fig, sf)
            png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
            fig.savefig(png, dpi=100, metadata={"Software": None})
            fig.savefig(svg, metadata={"Date": None})
        out.append(FigureOut(name, title, caption, png, svg))
    return out


def sweep_page(
    doc: Mapping[str, Any],
    directory: Path,
    levels: Sequence[SweepLevel],
    answer: Answer,
    knee: SweepLevel | None,
    table: Table,
    figs: Sequence[FigureOut],
    out: Path,
) -> Path:
    """``sweep.md`` and ``index.html`` of a sweep report; returns the index path."""
    import os

    title = f"rllmtop sweep: {doc.get('scenario') or directory.name}"
    facts = [
        ("sweep", str(directory)),
        ("axis", str(doc.get("axis"))),
        ("mode", str(doc.get("mode"))),
        ("status", str(doc.get("status")) + (f" ({doc['detail']})" if doc.get("detail") else "")),
        ("SLOs", ", ".join(f"{k} <= {v:g}" for k, v in dict(doc.get("slo", {})).items()) or "none"),
        (
            "goodput SLOs (s)",
            ", ".join(f"{k} <= {v:g}" for k, v in dict(doc.get("goodput", {})).items()) or "none",
        ),
        ("clock", "simulated (time-lapse)" if doc.get("clock") == "simulated" else "wall clock"),
        ("levels run", str(len(levels))),
        ("wall time", f"{float(doc.get('wall_s') or 0):.1f} s"),
    ]
    search = doc.get("search")
    if isinstance(search, Mapping):
        facts.append(("search", ", ".join(f"{k} {v}" for k, v in search.items())))
    notes = [f"Knee: {KNEE_RULE}."]
    if doc.get("saturation_rule"):
        notes.append(f"Early stop: {doc['saturation_rule']}.")
    links = []
    for lvl in sorted(levels, key=lambda x: x.index):
        rec = os.path.relpath(directory / lvl.recording, out)
        links.append(f"level {lvl.index} ({lvl.label}): {rec}")
    md = [
        f"# {title}",
        "",
        f"**{answer.line}**",
        "",
        *[f"- {k}: {v}" for k, v in facts],
        "",
        "## Levels",
        "",
        table.markdown(),
        "",
        *[f"{n}" for n in notes],
        "",
        "## Figures",
        "",
        *[f"- [{f.title}]({f.png.name}) ([SVG]({f.svg.name})): {f.caption}" for f in figs],
        "",
        "## Recordings",
        "",
        *[f"- {x}" for x in links],
        "",
    ]
    (out / "sweep.md").write_text("\n".join(md), encoding="utf-8")
    body = [
        f'<p class="note"><b>{html.escape(answer.line)}</b></p>',
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
        + "</table>",
        "<h2>Levels</h2>",
        table.html(),
        *[f"<p>{html.escape(n)}</p>" for n in notes],
        "<h2>Figures</h2>",
        figures_html(figs, out),
        "<h2>Recordings</h2>",
        "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in links) + "</ul>",
        "<p>Each recording has its own report: <code>rllmtop report LEVEL.db</code>.</p>",
    ]
    index = out / "index.html"
    index.write_text(page(title, "\n".join(body)), encoding="utf-8")
    return index
