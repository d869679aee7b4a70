"""The per-request timeline (a Gantt of requests under the KV usage line) and who filled the cache.

One text row per request on the charts' clock and window (``window_of``: the charts' own span), each cell
two half-cells wide in time (``▌``: left half in its colour, right half in the background's), coloured by
phase as the board colours them: queued, waiting for a first token, thinking, answering, then a done or
failed (``✗``) mark at its end. ``╳``: a long stall of its stream, a likely preemption
(:class:`~rllmtop.metrics.analysis.StallRule`; the view finds them). Above the rows, on the same x axis,
the engine's KV usage (the fleet's, or the engine in focus) with ``▼`` where preemptions were counted.
Beside the rows (below on a narrow screen): the requests in flight holding the most KV tokens now, and
the top holders at the last KV peak and the last burst of preemptions
(:data:`~rllmtop.view.CACHE_MOMENTS_LIVE`).

The rows come from :meth:`rllmtop.view.LiveView.timeline` (``source``), asked for only while the widget
is shown; a frame costs O(in flight + rows x width).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from rllmtop import fmt
from rllmtop.events import Phase
from rllmtop.metrics.analysis import KV_FULL, PHASES
from rllmtop.tui.widgets.board import PHASE_STYLES
from rllmtop.tui.widgets.styles import BOLD, DIM, RED, CachedStyle, color
from rllmtop.view import CacheView, RequestTimeline, ViewSnapshot

__all__ = ["LEGEND", "Timeline"]

_CODES = (*(Phase(p) for p in PHASES), Phase.DONE, Phase.FAILED)  # slot codes 0..5; -1 = nothing
_DONE, _FAILED = 4, 5
_COLORS = tuple(PHASE_STYLES[p] for p in _CODES)
_STALL = "╳"
_FAIL_MARK = "✗"
_EIGHTHS = " ▁▂▃▄▅▆▇█"
LEGEND = Text.assemble(
    *(
        part
        for p, c in zip(_CODES, _COLORS, strict=True)
        for part in (((_FAIL_MARK if p is Phase.FAILED else "█"), Style(color=c, bold=True)), f"{p.value} ")
    ),
    (_STALL, Style(bold=True)),
    " likely preemption ",
)
"""The box's subtitle: what the colours mean (Rich styles, as the rows and the board are coloured)."""

LABEL_W = 14  # "  1234 math    "
HOLDERS_W = 38  # the holders' column beside the rows
SIDE_MIN_W = 100  # holders beside the rows from this width, else below
HEAD_LINES = 3  # status, KV line, time axis


def _tok(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else f"{n:.0f}"


class Timeline(CachedStyle):
    """The timeline page. ``source(now, rows, t0)``: the view's :meth:`~rllmtop.view.LiveView.timeline`;
    ``window_of(snapshot)``: the span the charts show (so both share one x axis)."""

    DEFAULT_CSS = """
    Timeline {
        height: 1fr;
        min-height: 6;
        width: 1fr;
        display: none;
    }
    """

    def __init__(
        self,
        source: Callable[[float, int, float], RequestTimeline],
        window_of: Callable[[ViewSnapshot], float],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self._source = source
        self._window_of = window_of
        self._snap: ViewSnapshot | None = None
        self._key: object = None
        self._strips: list[Strip] = []
        self._styles: dict[tuple[int, int, bool], Style] = {}
        self.data: RequestTimeline | None = None  # what is drawn (tests)
        self.lines: list[str] = []  # plain text of what is drawn (tests)
        self.border_title = "timeline"
        self.border_subtitle = LEGEND

    # ------------------------------------------------------------------ input

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        self._snap = snap
        width, height = self.size
        if not self.display or not width or not height or not self.region:  # hidden: nothing to do
            return
        self._rebuild(snap, width, height)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        snap = self._snap
        if snap is not None and (id(snap), width, height) != self._key:
            self._rebuild(snap, width, height)
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.base_style)

    # ------------------------------------------------------------------ drawing

    def _rebuild(self, snap: ViewSnapshot, width: int, height: int) -> None:
        self._key = (id(snap), width, height)
        side = width >= SIDE_MIN_W
        gantt_w = width - HOLDERS_W - 1 if side else width
        below = 0 if side else min(max(2, (height - HEAD_LINES) // 2), 6)
        rows = max(0, height - HEAD_LINES - below)
        span = self._window_of(snap)
        t0 = snap.t - span
        data = self._source(snap.t, rows, t0)
        self.data = data
        base = self.base_style
        left = [self._status(data, rows, gantt_w), *self._kv(snap, t0, span, gantt_w)]
        left += self._rows(data, t0, span, gantt_w)
        moments = list(reversed(data.moments))  # the newest first
        if side:
            holders = self._holders(data.t, [data.now, *moments], HOLDERS_W, height)
        elif width >= 2 * HOLDERS_W + 1:  # two columns: now | the moments
            now_lines = self._holders(data.t, [data.now], HOLDERS_W, below)
            then_lines = self._holders(data.t, moments, width - HOLDERS_W - 1, below)
            sep = Segment("│", base + DIM)
            empty: list[Segment] = []
            holders = [
                [*Strip(x).crop_extend(0, HOLDERS_W, base), sep, *y]
                for x, y in itertools.zip_longest(now_lines, then_lines, fillvalue=empty)
            ]
        else:
            holders = self._holders(data.t, [data.now, *moments], width, below)
        out: list[list[Segment]] = []
        if side:
            for y in range(height):
                lft = left[y] if y < len(left) else []
                rgt = holders[y] if y < len(holders) else []
                out.append([*Strip(lft).crop_extend(0, gantt_w, base), Segment("│", base + DIM), *rgt])
        else:
            out = left[: height - len(holders[:below])] + holders[:below]
        self.lines = ["".join(s.text for s in segs) for segs in out]
        self._strips = [Strip(segs).crop_extend(0, width, base) for segs in out[:height]]

    def _status(self, d: RequestTimeline, rows: int, width: int) -> list[Segment]:
        base = self.base_style
        n = len(d.spans)
        parts = [f"{d.in_flight} in flight" + (f" ({d.queued} queued)" if d.queued else "")]
        parts.append(f"{d.ended} ended")
        if n < d.in_flight + d.ended:
            shown_open = int(d.spans.open.sum())
            rows_text = f"rows: {shown_open} longest in flight"
            parts.append(rows_text + (f" + {n - shown_open} newest ended" if n > shown_open else ""))
        text = " · ".join(parts)
        if not rows:
            text += " · too small for rows"
        return [Segment(text[:width], base + DIM)]

    def _kv(self, snap: ViewSnapshot, t0: float, span: float, width: int) -> list[list[Segment]]:
        """The KV usage line (max per column) and the time axis with ▼ where preemptions were counted."""
        base = self.base_style
        dim = base + DIM
        cols = max(0, width - LABEL_W)
        kv = snap.kv
        last = "n/a" if kv.missing else "-" if kv.last is None else f"{100 * kv.last:.0f}%"
        label = f"KV {last}".ljust(LABEL_W)[:LABEL_W]
        line: list[Segment] = [Segment(label, base + BOLD)]
        if cols:
            level = np.full(cols, np.nan)
            if kv.t.size and not kv.missing:
                idx = np.clip(((kv.t - t0) / span * cols).astype(np.int64), 0, cols - 1)
                ok = ~np.isnan(kv.v)
                np.fmax.at(level, idx[ok], kv.v[ok])
            full = base + color("red")
            used = base + color("green")
            for c in range(cols):
                v = level[c]
                if math.isnan(v):
                    line.append(Segment(" ", base))
                else:
                    ch = _EIGHTHS[min(8, max(1, round(v * 8)))]
                    line.append(Segment(ch, full if v >= KV_FULL else used))
        axis = [" "] * cols
        n_ticks = 4 if cols >= 40 else 2 if cols >= 12 else 0
        for k in range(n_ticks + 1):
            lab = "now" if k == n_ticks else f"-{fmt.duration(span * (1 - k / n_ticks))}"
            x = round(k * (cols - 1) / n_ticks) if n_ticks else 0
            pos = 0 if k == 0 else cols - len(lab) if k == n_ticks else max(0, x - len(lab) // 2)
            if pos >= 0 and all(ch == " " for ch in axis[max(0, pos - 1) : pos + len(lab) + 1]):
                axis[pos : pos + len(lab)] = list(lab)
        marks = snap.preemptions
        mark_cols: set[int] = set()
        if cols and marks.t.size and not marks.missing:
            m = marks.v > 0
            mark_cols = set(np.clip(((marks.t[m] - t0) / span * cols).astype(np.int64), 0, cols - 1).tolist())
        axis_segs: list[Segment] = [
            Segment("preempted ▼".ljust(LABEL_W) if mark_cols else " " * LABEL_W, dim)
        ]
        red = base + RED
        for c, ch in enumerate(axis):
            axis_segs.append(Segment("▼", red) if c in mark_cols else Segment(ch, dim))
        return [line, axis_segs]

    def _style(self, fg: int, bg: int, bold: bool = False) -> Style:
        key = (fg, bg, bold)
        st = self._styles.get(key)
        if st is None:
            st = Style(
                color=_COLORS[fg] if fg >= 0 else "bright_white",
                bgcolor=_COLORS[bg] if bg >= 0 else None,
                bold=bold,
            )
            st = self._styles[key] = self.base_style + st
        return st

    def _rows(self, d: RequestTimeline, t0: float, span: float, width: int) -> list[list[Segment]]:
        """One line per request: its label, then its phases over time (two half-cells per cell)."""
        sp = d.spans
        n = len(sp)
        base = self.base_style
        cols = max(0, width - LABEL_W)
        if not n:
            return [[Segment("no request in the window", base + DIM)]]
        slots = 2 * cols
        dt = span / slots if slots else 1.0
        bounds = [sp.phase_bounds()[p] for p in PHASES]
        phase_of = np.full((n, slots), -1, dtype=np.int8)
        stall = np.zeros((n, slots), dtype=bool)

        def paint(a: float, b: float) -> tuple[int, int] | None:
            """The slots [i, j) covering [a, b]; at least one if it overlaps the window."""
            if not (b >= t0 and a <= t0 + span) or not slots:
                return None
            i = min(max(0, math.floor((a - t0) / dt)), slots - 1)
            j = min(max(i + 1, math.ceil((b - t0) / dt)), slots)
            return i, j

        for r in range(n):
            for code, (a, b) in enumerate(bounds):
                x, y = float(a[r]), float(b[r])
                if x != x or y != y:  # NaN: the phase did not happen
                    continue
                got = paint(x, y)
                if got is not None:
                    phase_of[r, got[0] : got[1]] = code
            if not sp.open[r]:
                got = paint(float(sp.t_end[r]), float(sp.t_end[r]))
                if got is not None:
                    phase_of[r, got[0]] = _DONE if sp.status[r] == 0 else _FAILED
        for r, a, b in zip(sp.stall_row.tolist(), sp.stall_t0.tolist(), sp.stall_t1.tolist(), strict=True):
            got = paint(a, b)
            if got is not None:
                stall[r, got[0] : got[1]] = True
        out = []
        classes = sp.classes
        for r in range(n):
            now_phase = d.phase[r]
            label = f"{int(sp.rid[r]):>6} {classes[int(sp.cls[r])]:<7.7}"[: LABEL_W - 1].ljust(LABEL_W)
            segs: list[Segment] = [Segment(label, base + color(PHASE_STYLES[now_phase]))]
            row, st = phase_of[r], stall[r]
            text: list[str] = []
            style: Style | None = None
            for c in range(cols):
                lo, hi = int(row[2 * c]), int(row[2 * c + 1])
                if lo == _FAILED or hi == _FAILED:  # its end, failed: a mark of its own (red is near magenta)
                    ch, s = _FAIL_MARK, self._style(_FAILED, -1, True)
                elif st[2 * c] or st[2 * c + 1]:
                    ch, s = _STALL, self._style(-1, hi if hi >= 0 else lo, True)
                elif lo < 0 and hi < 0:
                    ch, s = " ", base
                elif lo == hi:
                    ch, s = "█", self._style(lo, -1)
                elif lo >= 0:
                    ch, s = "▌", self._style(lo, hi)
                else:
                    ch, s = "▐", self._style(hi, -1)
                if s is not style and text:
                    segs.append(Segment("".join(text), style))
                    text = []
                style = s
                text.append(ch)
            if text:
                segs.append(Segment("".join(text), style))
            out.append(segs)
        return out

    def _holders(self, now: float, views: list[CacheView], width: int, room: int) -> list[list[Segment]]:
        """Who holds the cache now, then at the last KV peak and the last burst of preemptions: a head
        line each, then its top holders (tokens held = prompt + tokens so far; ~: the prompt is its
        class's mean so far)."""
        if room <= 0:
            return []
        base = self.base_style
        bold = base + BOLD
        dim = base + DIM
        out: list[list[Segment]] = []
        if not views:
            return [[Segment("no KV peak or preemption burst yet"[:width], dim)]]
        quota = max(1, (room - len(views)) // len(views))
        for cv in views:
            m = cv.moment
            if m.kind == "now":
                head = f"KV now · {m.in_flight} in flight · {_tok(m.held_tokens)} tok"
                top = 5
            elif m.kind == "kv peak":
                kv = "-" if m.kv is None else f"{100 * m.kv:.0f}%"
                head = f"KV peak {kv} · {fmt.duration(now - m.t)} ago · {m.in_flight} in flight"
                top = 3
            else:
                head = f"{m.preemptions:.0f} preemptions · {fmt.duration(now - m.t)} ago · {m.in_flight} in flight"
                top = 3
            out.append([Segment(head[:width], bold)])
            if not m.holders:
                out.append([Segment("  no request in flight"[:width], dim)])
            for h in m.holders[: min(quota, top)]:
                est = "~" if h.rid in cv.estimated else " "
                phase = "stalled" if h.stalled else h.phase
                color_name = PHASE_STYLES.get(Phase(h.phase), "white") if not h.stalled else "red"
                line = f"{h.rid:>6} {h.cls:<8.8} {_tok(h.tokens):>6}{est} "
                out.append(
                    [
                        Segment(line[:width], base),
                        Segment(phase[: max(0, width - len(line))], base + color(color_name)),
                    ]
                )
        return out[:room]
