"""The per-request timeline (a Gantt chart under a KV/queue strip) and the "who filled the cache" table.

The chart is drawn from :func:`rllmtop.metrics.analysis.request_spans` (the TUI can draw the same data):
one bar per request, coloured by phase (:data:`rllmtop.metrics.analysis.PHASES`: queued in the client,
sent and waiting for a first token, thinking, answering), a mark at its end (red: failed or cancelled),
long stream stalls overlaid (:class:`rllmtop.metrics.analysis.StallRule`: likely preemptions). Above it,
on the same clock (seconds since load start), the engine's KV usage and its running/waiting queues.

Two renderings of one layout: a PNG (matplotlib, for the report page) and a hand-written SVG in which
every request is a group with a hover ``<title>`` saying its phases, tokens and stalls. Up to
:data:`ROWS_MAX` requests get a row each (in start order); more are packed into lanes (a lane holds
requests that never overlap; the number of lanes is the peak number of requests in the client at once).
The SVG costs about 300 bytes per request (10k requests: ~3 MB; ``bench/bench_timeline.py`` measures it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rllmtop import fmt
from rllmtop.metrics.analysis import (
    CACHE_MOMENTS_RULE,
    KV_FULL,
    CacheMoment,
    RequestSpans,
    StallRule,
    cache_moments,
    request_spans,
)
from rllmtop.summary import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rllmtop.record.report.run import Derived

__all__ = [
    "ROWS_MAX",
    "TimelineData",
    "cache_table",
    "draw_timeline",
    "moments_json",
    "timeline_data",
    "timeline_svg",
]

ROWS_MAX = 400
COLORS = {"queued": "#c7c7c7", "waiting": "#fdae6b", "thinking": "#9467bd", "answering": "#2ca02c"}
FAILED = "#d62728"
STALL = "#000000"
_CSS = {"queued": "q", "waiting": "w", "thinking": "t", "answering": "a"}


@dataclass(frozen=True)
class TimelineData:
    """What the timeline draws, on seconds since load start."""

    spans: RequestSpans
    row: np.ndarray  # the row (or lane) of each request
    rows: int
    packed: bool  # rows are lanes of several requests
    strip_t: np.ndarray  # bin centres
    kv: np.ndarray  # 0..1
    running: np.ndarray
    waiting: np.ndarray
    unit: str  # "s, wall clock" | "simulated s"
    t_end: float


def timeline_data(d: Derived, unit: str, rule: StallRule | None = None) -> TimelineData:
    """The timeline of one derived run (its requests and its gauge timeline, shifted to its load start)."""
    spans = request_spans(d.data.requests, rule=rule).shifted(d.t0)
    n = len(spans)
    if n > ROWS_MAX:
        row, rows = spans.lanes()
        packed = True
    else:
        row, rows, packed = np.arange(n, dtype=np.int64), n, False
    tl = d.tl_gauge
    if tl is not None:
        x = tl.t + tl.step / 2
        kv, run, wait = (tl.columns[k] for k in ("kv_cache_usage", "requests_running", "requests_waiting"))
    else:
        x = kv = run = wait = np.empty(0)
    ends = spans.t_end[np.isfinite(spans.t_end)]
    t_end = max(float(ends.max()) if ends.size else 0.0, float(x.max()) if x.size else 0.0, 1e-3)
    return TimelineData(spans, row, max(rows, 1), packed, x, kv, run, wait, unit, t_end)


def _segments(td: TimelineData) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{phase: (row, begin, end)} of the bars that exist."""
    out = {}
    for phase, (a, b) in td.spans.phase_bounds().items():
        m = ~np.isnan(a) & ~np.isnan(b)
        out[phase] = (td.row[m], a[m], b[m])
    return out


def draw_timeline(fig: Figure, td: TimelineData) -> str:
    """The PNG rendering: the KV/queue strip above the Gantt chart; returns the caption."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    ax_s, ax_g = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 4]})
    if td.strip_t.size and np.any(~np.isnan(td.kv)):
        ax_s.plot(td.strip_t, 100 * td.kv, color="#1f77b4", lw=1.3, label="KV usage (%)")
        ax_s.axhline(100 * KV_FULL, color="#999999", ls=":", lw=0.8)
    ax_s.set_ylim(0, 105)
    ax_s.set_ylabel("KV usage (%)")
    ax_q = ax_s.twinx()
    if td.strip_t.size:
        ax_q.plot(td.strip_t, td.running, color="#ff7f0e", lw=1.0, label="running")
        ax_q.plot(td.strip_t, td.waiting, color="#d62728", lw=1.0, ls="--", label="waiting")
    ax_q.set_ylabel("requests")
    ax_q.set_ylim(bottom=0)
    h1, l1 = ax_s.get_legend_handles_labels()
    h2, l2 = ax_q.get_legend_handles_labels()
    if h1 or h2:
        ax_s.legend(h1 + h2, l1 + l2, loc="upper left", fontsize="x-small", ncol=3)
    ax_s.grid(True, alpha=0.3)
    ax_s.set_title("Requests over time: phases of each request under the engine's KV usage and queues")
    height = 0.8
    for phase, (row, a, b) in _segments(td).items():
        if not row.size:
            continue
        y0 = row - height / 2
        y1 = row + height / 2
        verts = np.stack(
            [np.stack([a, y0], 1), np.stack([b, y0], 1), np.stack([b, y1], 1), np.stack([a, y1], 1)], axis=1
        )
        ax_g.add_collection(
            PolyCollection(list(verts), facecolors=COLORS[phase], edgecolors="none", linewidths=0)
        )
    sp = td.spans
    bad = (sp.status == 1) | (sp.status == 2)
    if bad.any():
        ax_g.scatter(sp.t_end[bad], td.row[bad], marker="|", color=FAILED, s=30, zorder=3)
    if sp.stall_row.size:
        rows = td.row[sp.stall_row]
        verts = np.stack(
            [
                np.stack([sp.stall_t0, rows - 0.15], 1),
                np.stack([sp.stall_t1, rows - 0.15], 1),
                np.stack([sp.stall_t1, rows + 0.15], 1),
                np.stack([sp.stall_t0, rows + 0.15], 1),
            ],
            axis=1,
        )
        ax_g.add_collection(PolyCollection(list(verts), facecolors=STALL, edgecolors="none"))
    ax_g.set_xlim(0, td.t_end * 1.01)
    ax_g.set_ylim(td.rows - 0.5, -0.5)  # first request on top
    what = "lane (requests that never overlap share one)" if td.packed else "request (in start order)"
    ax_g.set_ylabel(what)
    ax_g.set_xlabel(f"time since load start ({td.unit})")
    handles = [Patch(color=COLORS[p], label=p) for p in COLORS]
    handles.append(Patch(color=STALL, label=f"stall ({sp.rule.describe()})"))
    handles.append(Patch(color=FAILED, label="failed or cancelled (end mark)"))
    ax_g.legend(handles=handles, loc="upper right", fontsize="x-small", ncol=2)
    ax_g.grid(True, axis="x", alpha=0.3)
    if not len(sp):
        ax_g.text(0.5, 0.5, "no request", transform=ax_g.transAxes, ha="center")
    packed = (
        f" {len(sp)} requests packed into {td.rows} lanes (requests that never overlap share a lane)."
        if td.packed
        else ""
    )
    return (
        "Each bar is a request: queued in the client (its schedule to its start: concurrency-cap wait and send "
        "lag), sent and waiting for its first token (engine queue and prefill), thinking (first token to first "
        "visible token), answering (to its end). Black: long stream stalls, likely preemptions "
        f"({sp.rule.describe()}); {len(sp.stall_row)} found. Above, on the same clock: KV usage, running and "
        f"waiting requests.{packed} The SVG has the same chart with a hover title per request."
    )


def timeline_svg(td: TimelineData, path: Path, title: str) -> int:
    """Write the SVG rendering (a group with a hover ``<title>`` per request); returns its size in bytes.
    O(n + stalls); written in one pass."""
    width, left, right = 1200, 70, 20
    strip_top, strip_h = 40, 110
    g_top = strip_top + strip_h + 30
    row_h = max(0.5, min(12.0, 1000.0 / td.rows))
    g_h = row_h * td.rows
    height = int(g_top + g_h + 60)
    pw = width - left - right
    scale = pw / (td.t_end * 1.01)

    def X(t: float) -> str:
        return f"{left + t * scale:.1f}"

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        "<style>"
        + "".join(f".{c}{{fill:{COLORS[p]}}}" for p, c in _CSS.items())
        + f".s{{fill:{STALL}}}.f{{fill:{FAILED}}}g:hover rect{{stroke:#000;stroke-width:.5}}</style>",
        f'<text x="{left}" y="20" font-size="14">{html.escape(title)}</text>',
    ]
    # the strip: KV usage (0..100%) and the queues (0..their max) on the same clock
    out.append(
        f'<rect x="{left}" y="{strip_top}" width="{pw}" height="{strip_h}" fill="none" stroke="#ccc"/>'
    )
    q = np.concatenate([td.running, td.waiting])
    q = q[np.isfinite(q)]
    qmax = float(q.max()) if q.size and q.max() > 0 else 1.0
    for series, top, color, dash in (
        (td.kv, 1.0, "#1f77b4", ""),
        (td.running, qmax, "#ff7f0e", ""),
        (td.waiting, qmax, "#d62728", ' stroke-dasharray="4 2"'),
    ):
        pts = [
            f"{X(float(t))},{strip_top + strip_h * (1 - float(v) / top):.1f}"
            for t, v in zip(td.strip_t, series, strict=True)
            if math.isfinite(v)
        ]
        if pts:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.2"{dash} points="{" ".join(pts)}"/>'
            )
    out.append(
        f'<text x="{left + 4}" y="{strip_top + 12}" fill="#1f77b4">KV usage (0-100%)</text>'
        f'<text x="{left + 150}" y="{strip_top + 12}" fill="#ff7f0e">running</text>'
        f'<text x="{left + 215}" y="{strip_top + 12}" fill="#d62728">waiting (0-{qmax:.0f} requests)</text>'
        f'<text x="{left - 4}" y="{strip_top + 8}" text-anchor="end">100%</text>'
        f'<text x="{left - 4}" y="{strip_top + strip_h}" text-anchor="end">0</text>'
    )
    # the time axis
    step = _tick_step(td.t_end)
    t = 0.0
    while t <= td.t_end * 1.01:
        x = X(t)
        out.append(
            f'<line x1="{x}" x2="{x}" y1="{strip_top}" y2="{g_top + g_h}" stroke="#eee"/>'
            f'<text x="{x}" y="{g_top + g_h + 16}" text-anchor="middle">{t:g}</text>'
        )
        t += step
    out.append(
        f'<text x="{left + pw / 2}" y="{g_top + g_h + 36}" text-anchor="middle">time since load start '
        f"({html.escape(td.unit)})</text>"
    )
    what = "lanes (requests that never overlap share one)" if td.packed else "requests, in start order"
    out.append(f'<text x="{left}" y="{g_top - 8}">{html.escape(what)}; hover a bar for the request</text>')
    sp = td.spans
    bounds = {k: (a.tolist(), b.tolist()) for k, (a, b) in sp.phase_bounds().items()}
    stalls_of: dict[int, list[tuple[float, float]]] = {}
    for k, a, b in zip(sp.stall_row.tolist(), sp.stall_t0.tolist(), sp.stall_t1.tolist(), strict=True):
        stalls_of.setdefault(k, []).append((a, b))
    h = f"{max(row_h * 0.8, 0.4):.1f}"
    names = [
        c + (f" ({d})" if d and d != c else "")
        for c, d in zip((sp.classes[k] for k in sp.cls.tolist()), sp.difficulty, strict=True)
    ]
    columns = zip(
        sp.rid.tolist(),
        names,
        td.row.tolist(),
        sp.status.tolist(),
        sp.open.tolist(),
        sp.finish,
        sp.t_end.tolist(),
        sp.prompt_tokens.tolist(),
        sp.reasoning_tokens.tolist(),
        sp.answer_tokens.tolist(),
        strict=True,
    )
    phases = list(_CSS.items())
    for i, (rid, name, row, status, opened, finish, t_end, pt, rt, at) in enumerate(columns):
        y = f"{g_top + row_h * row + row_h * 0.1:.1f}"
        rects = []
        parts = []
        for phase, css in phases:
            a, b = bounds[phase][0][i], bounds[phase][1][i]
            if a != a or b != b:  # NaN: the phase did not happen
                continue
            parts.append(f"{phase} {fmt.seconds(b - a)}")
            rects.append(
                f'<rect class="{css}" x="{X(a)}" y="{y}" width="{max((b - a) * scale, 0.3):.1f}" height="{h}"/>'
            )
        words = ""
        for a, b in stalls_of.get(i, ()):
            rects.append(
                f'<rect class="s" x="{X(a)}" y="{y}" width="{max((b - a) * scale, 0.5):.1f}" height="{h}"/>'
            )
            words += f"; stalled {fmt.seconds(b - a)} at {a:.1f} s (likely preemption)"
        if status in (1, 2):
            rects.append(f'<rect class="f" x="{X(t_end)}" y="{y}" width="1.5" height="{h}"/>')
        prompt = fmt.MISSING if pt != pt else f"{pt:.0f}"
        title = (
            f"#{rid} {name}: {', '.join(parts) or 'no phase'}; {'in flight' if opened else finish}; prompt "
            f"{prompt} + reasoning {rt:.0f} + answer {at:.0f} tokens{words}"
        )
        out.append(f"<g><title>{html.escape(title)}</title>{''.join(rects)}</g>")
    legend_y = height - 10
    x0 = left
    for phase, color in COLORS.items():
        out.append(
            f'<rect x="{x0}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x0 + 14}" y="{legend_y}">{phase}</text>'
        )
        x0 += 90
    out.append(
        f'<rect x="{x0}" y="{legend_y - 9}" width="10" height="10" fill="{STALL}"/>'
        f'<text x="{x0 + 14}" y="{legend_y}">stall: {html.escape(sp.rule.describe())}</text>'
    )
    out.append("</svg>\n")
    text = "\n".join(out)
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def _tick_step(span: float) -> float:
    for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600):
        if span / s <= 12:
            return float(s)
    return float(math.ceil(span / 12 / 3600) * 3600)


# ============================================================================================ who filled the cache


def run_moments(d: Derived) -> list[CacheMoment]:
    """The run's cache moments (on the session clock)."""
    return cache_moments(d.data.requests, d.data.per_engine)


def cache_table(moments: Sequence[CacheMoment], t0: float, unit: str) -> Table:
    """One row per top holder at each moment (the moment's facts on its first row); times since load start."""
    head = (
        f"t since load start ({unit})",
        "moment",
        "KV",
        "preempt",
        "in flight",
        "tokens held",
        "request",
        "class",
        "prompt",
        "reasoning",
        "answer",
        "tokens",
        "share",
        "phase",
    )
    rows = []
    for m in moments:
        first = [
            f"{m.t - t0:.1f}",
            m.kind,
            fmt.percent(m.kv, 0),
            fmt.count(m.preemptions),
            str(m.in_flight),
            f"{m.held_tokens:,}",
        ]
        if not m.holders:
            rows.append([*first, "", "", "", "", "", "", "", "no request in flight"])
        for k, h in enumerate(m.holders):
            lead = first if k == 0 else [""] * len(first)
            cls = h.cls + (f" ({h.difficulty})" if h.difficulty and h.difficulty != h.cls else "")
            rows.append(
                [
                    *lead,
                    f"#{h.rid}",
                    cls,
                    fmt.tokens(h.prompt_tokens),
                    str(h.reasoning),
                    str(h.answer),
                    f"{h.tokens:,}",
                    fmt.percent(h.tokens / m.held_tokens if m.held_tokens and not h.stalled else None, 0),
                    h.phase + (" (stalled: likely preempted)" if h.stalled else ""),
                ]
            )
    right = (True, False, True, True, True, True, False, False, True, True, True, True, True, False)
    return Table.of(head, rows, right)


def moments_json(moments: Sequence[CacheMoment], t0: float) -> list[dict[str, object]]:
    return [
        {
            "t": m.t - t0,
            "kind": m.kind,
            "kv": m.kv,
            "preemptions": m.preemptions,
            "in_flight": m.in_flight,
            "held_tokens": m.held_tokens,
            "holders": [
                {
                    "rid": h.rid,
                    "class": h.cls,
                    "difficulty": h.difficulty,
                    "prompt_tokens": h.prompt_tokens,
                    "reasoning": h.reasoning,
                    "answer": h.answer,
                    "tokens": h.tokens,
                    "phase": h.phase,
                    "stalled": h.stalled,
                }
                for h in m.holders
            ],
        }
        for m in moments
    ]


CACHE_NOTE = (
    f"Who filled the cache: {CACHE_MOMENTS_RULE}. Tokens held = prompt (from usage) + tokens generated by then "
    "(chunk times of the gap blob, scaled to the final counts); a request still waiting for its first token may "
    "not hold KV yet. preempt: preemptions counted in the 5 s window (ending at a burst's busiest reading, "
    "around a KV peak); share: of the tokens held then."
)
