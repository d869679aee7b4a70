"""A braille time-series chart: min/max per column, several series, cached render.

Each character cell holds 2x4 braille dots. Points are reduced to their min and max per dot column (numpy,
O(points)); the strips are rebuilt only when the data, the time column or the size changed, and only while
the chart is on screen (a hidden chart costs nothing: it rebuilds when drawn). A rebuild repaints only the
lines that changed (usually the title and the right edge), so Textual re-renders a few lines, not the
chart. The right edge of the time axis is snapped to a whole dot column so points do not jitter between
columns as time moves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip

from rllmtop import fmt
from rllmtop.tui.widgets.styles import BOLD, DIM, RED, RED_BOLD, CachedStyle, color
from rllmtop.view import Series, ViewSnapshot

__all__ = [
    "BrailleChart",
    "ChartData",
    "Line",
    "braille_codes",
    "column_minmax",
    "hold_forward",
    "mark_texts",
    "nice_ceiling",
]

_BRAILLE = [chr(0x2800 + i) for i in range(256)]
_BRAILLE_NP = np.array(_BRAILLE, dtype="<U1")
# dot (row 0..3, col 0..1) -> bit
_WEIGHTS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint16)
GUTTER = 6  # y-axis label width, incl. one space


@dataclass(frozen=True, slots=True)
class Line:
    """One series as drawn: ``fill`` draws an area down to ``base`` (stacked areas pass the one below)."""

    series: Series
    label: str
    color: str
    fill: bool = False
    stack_on: Series | None = None  # add this series' values first (stacked area)
    hold: float = 1.0  # a point's value holds for this long (a 1 s rate bin; a gauge until the next scrape)
    fmt: Callable[[float], str] | None = None  # legend value format


@dataclass(frozen=True, slots=True)
class ChartData:
    lines: tuple[Line, ...]
    t1: float  # right edge (session seconds)
    window: float
    version: tuple[int, ...]  # changes whenever a point was added to one of its series
    y_max: float | None = None  # fixed top of the axis (None: from the data)
    ref_line: float | None = None  # a dotted horizontal line (e.g. KV 100%)
    marks: Series | None = None  # instants to flag on the top row (preemptions)
    mark_label: str = ""
    mark_total: float | None = None  # the marks' total over the run (the window's is counted from marks)
    y_fmt: Callable[[float], str] | None = None
    scope: str = ""  # what the chart covers, after its title (e.g. "fleet: mean of 2", an engine's name)


def mark_texts(label: str, in_window: int, run: int | None) -> list[str]:
    """The marks' legend, longest first, saying whether it counts the window or the run:
    ``▼ preempted 25 in window / 118 run``, ``▼ preempted 118 run (all in window)``."""
    if run is None:
        return [f"▼ {label} {in_window} in window", f"▼ {in_window} in window", f"▼{in_window} win"]
    if in_window == run:
        return [f"▼ {label} {run} run (all in window)", f"▼ {label} {run} run", f"▼ {run} run"]
    return [
        f"▼ {label} {in_window} in window / {run} run",
        f"▼ {label} {in_window} win / {run} run",
        f"▼ {in_window} win / {run} run",
        f"▼{in_window}/{run} run",
    ]


def nice_ceiling(x: float) -> float:
    """The next 1/2/2.5/5 x 10^k at or above ``x`` (axis tops)."""
    if not math.isfinite(x) or x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * 10**exp >= x * (1 - 1e-9):
            return m * 10**exp
    return 10.0 ** (exp + 1)


def human(x: float) -> str:
    """Short number: 950, 1.2k, 34k, 1.5M."""
    if not math.isfinite(x):
        return "-"
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.1f}M"
    if a >= 1e4:
        return f"{x / 1e3:.0f}k"
    if a >= 1e3:
        return f"{x / 1e3:.1f}k"
    if a >= 10 or a == 0:
        return f"{x:.0f}"
    return f"{x:.1f}"


def column_minmax(
    t: np.ndarray, v: np.ndarray, t0: float, dt: float, ncols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(min, max, last) of the points in each column ``[t0 + i*dt, t0 + (i+1)*dt)``; NaN where empty.

    ``t`` must be ascending. NaN values are ignored (a column of NaNs is empty)."""
    lo = np.full(ncols, np.nan)
    hi = np.full(ncols, np.nan)
    last = np.full(ncols, np.nan)
    if t.size == 0 or ncols <= 0:
        return lo, hi, last
    edges = t0 + dt * np.arange(ncols + 1)
    starts = np.searchsorted(t, edges[:-1], side="left")
    ends = np.searchsorted(t, edges[1:], side="left")
    full = ends > starts
    if not full.any():
        return lo, hi, last
    idx = starts[full]
    vv = v[: int(ends[-1])]  # reduceat's last segment runs to the end: cut the points past the window
    lo[full] = np.fmin.reduceat(vv, idx)
    hi[full] = np.fmax.reduceat(vv, idx)
    last[full] = v[ends[full] - 1]
    return lo, hi, last


def hold_forward(
    lo: np.ndarray, hi: np.ndarray, last: np.ndarray, cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill up to ``cols`` empty columns after each non-empty one with its last value (a value holds until
    the next point when columns are narrower than the sampling step)."""
    if cols <= 0 or lo.size == 0:
        return lo, hi, last
    idx = np.arange(lo.size)
    filled = ~np.isnan(last)
    src = np.maximum.accumulate(np.where(filled, idx, -1))
    take = ~filled & (src >= 0) & (idx - src <= cols)
    if not take.any():
        return lo, hi, last
    lo, hi, last = lo.copy(), hi.copy(), last.copy()
    held = last[src[take]]
    lo[take] = held
    hi[take] = held
    last[take] = held
    return lo, hi, last


def _zero_nan(x: np.ndarray) -> np.ndarray:
    """NaN -> 0 (cheaper than np.nan_to_num, which also maps infinities)."""
    return np.where(np.isnan(x), 0.0, x)


def braille_codes(
    lo: np.ndarray,
    hi: np.ndarray,
    last: np.ndarray,
    y_max: float,
    rows: int,
    *,
    fill: bool,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Braille code (0..255) per cell, shape (rows, len(lo)//2), for one series' per-dot-column ranges.

    Lines join neighbouring columns (each column's range is widened to the previous column's last
    value); ``fill`` draws an area from ``base`` (default 0) up to the max."""
    ncols = lo.size
    dots = rows * 4
    scale = (dots - 1) / y_max if y_max > 0 else 0.0
    valid = ~np.isnan(hi)
    if fill:
        top = hi
        bottom = np.zeros(ncols) if base is None else _zero_nan(base)
    else:
        prev_last = np.empty_like(last)
        prev_last[0] = np.nan
        prev_last[1:] = last[:-1]
        joined = valid & ~np.isnan(prev_last)
        bottom = np.where(joined, np.fmin(lo, prev_last), lo)
        top = np.where(joined, np.fmax(hi, prev_last), hi)
    top0 = _zero_nan(top)
    bottom0 = _zero_nan(bottom)
    with np.errstate(invalid="ignore", over="ignore"):
        y_top = np.minimum(np.maximum(np.rint(top0 * scale), 0), dots - 1)
        y_bot = np.minimum(np.maximum(np.rint(bottom0 * scale), 0), dots - 1)
    if fill and base is not None:
        # a stacked area starts above the one below it; at zero height it draws nothing
        valid = valid & (top0 > bottom0)
        y_bot = np.where(y_bot < y_top, y_bot + 1, y_bot)
    r = np.arange(dots)[::-1][:, None]  # row 0 is the top: its dot height is dots-1
    grid = (r >= y_bot[None, :]) & (r <= y_top[None, :]) & valid[None, :]
    if ncols % 2:
        grid = np.concatenate([grid, np.zeros((dots, 1), dtype=bool)], axis=1)
    cells = grid.reshape(rows, 4, -1, 2)
    return np.einsum("rhcw,hw->rc", cells.astype(np.uint16), _WEIGHTS).astype(np.uint8)


class BrailleChart(CachedStyle):
    """A titled braille chart. Feed it with :meth:`update_snapshot` (it picks its data with ``select``)."""

    DEFAULT_CSS = """
    BrailleChart {
        height: 1fr;
        min-height: 3;
        width: 1fr;
    }
    """

    def __init__(
        self,
        title: str,
        select: Callable[[ViewSnapshot], ChartData],
        *,
        show_axis: bool = False,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.title = title
        self.select = select
        self.show_axis = show_axis
        self._snap: ViewSnapshot | None = None
        self._data: ChartData | None = None
        self._key: object = None
        self._strips: list[Strip] = []
        self._row_cache: dict[tuple[str, str, bytes], Strip] = {}
        self._row_base: object = None
        self._title_key: object = None
        self._title_strip = Strip([])
        self.renders = 0  # how many times the strips were rebuilt (tests and bench)

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        """Take a snapshot; if it changes the picture (a new point, a new time column) and the chart is on
        screen, rebuild now and repaint only the lines that differ."""
        self._snap = snap
        data = self.select(snap)
        width, height = self.size
        key, t1q = self._key_for(data, width, height)
        if key == self._key:
            return
        if not width or not height or not self.region:  # hidden: rebuilt when drawn (render_line)
            self.refresh()
            return
        old = self._strips
        self._rebuild(data, key, t1q, width, height)
        new = self._strips
        if len(old) != len(new):
            self.refresh()
            return
        for y, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                self.refresh(Region(0, y, width, 1))

    @property
    def data(self) -> ChartData | None:
        """The data of the last render (None before the first)."""
        return self._data

    def _key_for(self, data: ChartData, width: int, height: int) -> tuple[object, float]:
        """(cache key, right edge snapped to a whole dot column)."""
        dt = data.window / max(1, 2 * (width - GUTTER))
        t1q = math.ceil(data.t1 / dt) * dt
        return (data.version, round(t1q / dt), data.window, width, height, data.scope), t1q

    def _rebuild(self, data: ChartData, key: object, t1q: float, width: int, height: int) -> None:
        self._key = key
        self._data = data
        self._strips = self._build(data, t1q, width, height)
        self.renders += 1

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._snap is not None:
            data = self.select(self._snap)
            key, t1q = self._key_for(data, width, height)
            if key != self._key:
                self._rebuild(data, key, t1q, width, height)
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.base_style)

    # ------------------------------------------------------------------ rendering

    def _build(self, data: ChartData, t1: float, width: int, height: int) -> list[Strip]:
        base_style = self.base_style
        muted = base_style + DIM
        strips = [self._title(data, width, base_style)]
        plot_rows = height - 1 - (1 if self.show_axis else 0)
        plot_w = width - GUTTER
        if plot_rows <= 0 or plot_w <= 2:
            return strips + [Strip.blank(width, base_style)] * max(0, height - 1)
        ncols = 2 * plot_w
        dt = data.window / ncols
        t0 = t1 - data.window
        missing = [ln for ln in data.lines if ln.series.missing]
        if missing and len(missing) == len(data.lines):
            msg = f"n/a: the engine does not serve {missing[0].series.name}"
            for r in range(plot_rows):
                text = msg[:plot_w] if r == plot_rows // 2 else ""
                strips.append(Strip([Segment(" " * GUTTER + text.center(plot_w), muted)], width))
        else:
            strips.extend(self._plot(data, t0, dt, ncols, plot_rows, plot_w, base_style, muted))
        if self.show_axis:
            strips.append(self._axis(data.window, plot_w, muted))
        return [s.crop_extend(0, width, base_style) for s in strips]

    def _title(self, data: ChartData, width: int, base: Style) -> Strip:
        """Title, scope, one legend entry per line and the marks' count; the longest wording that fits."""
        head = self.title + (f" · {data.scope}" if data.scope else "")
        values = []
        for ln in data.lines:
            if ln.series.missing:
                values.append("n/a")
            elif ln.series.last is None:
                values.append("-")
            else:
                values.append((ln.fmt or human)(ln.series.last))
        n: int | None = None
        run: int | None = None
        if data.marks is not None and not data.marks.missing:
            n = int(np.nansum(data.marks.v)) if data.marks.v.size else 0
            run = None if data.mark_total is None else round(data.mark_total)
        key = (head, tuple(values), n, run, width, base)
        if key == self._title_key:
            return self._title_strip
        marks: list[str] = [""]
        red = False
        if n is not None:
            marks = mark_texts(data.mark_label, n, run)
            red = bool(n or run)
        legends = [
            [f"  ■ {ln.label} {v}" for ln, v in zip(data.lines, values, strict=True)],
            [f" ■ {ln.label} {v}" for ln, v in zip(data.lines, values, strict=True)],
        ]
        if marks != [""]:  # labels give way to the marks' count (it says window or run); else: cropped
            legends.append([f" ■{v}" for v in values])
        pick = None
        for m in marks:
            for legend in legends:
                used = len(head) + sum(len(x) for x in legend) + (len(m) + 2 if m else 0)
                if used <= width:
                    pick = (legend, m)
                    break
            if pick is not None:
                break
        if pick is None:
            pick = (legends[-1], marks[-1])
        legend, mark = pick
        segs = [Segment(head, base + BOLD)]
        for ln, text in zip(data.lines, legend, strict=True):
            cut = text.index("■")
            segs.append(Segment(text[: cut + 1], base + color(ln.color)))
            segs.append(Segment(text[cut + 1 :], base))
        if mark:
            segs.append(Segment("  " + mark, base + RED if red else base))
        self._title_key = key
        self._title_strip = Strip(segs).crop_extend(0, width, base)
        return self._title_strip

    def _plot(
        self,
        data: ChartData,
        t0: float,
        dt: float,
        ncols: int,
        rows: int,
        plot_w: int,
        base: Style,
        muted: Style,
    ) -> list[Strip]:
        top = data.y_max
        reduced = []
        for ln in data.lines:
            s = ln.series
            v = s.v
            if ln.stack_on is not None and ln.stack_on.v.size == v.size and v.size:
                v = _zero_nan(ln.stack_on.v) + _zero_nan(v)
            lo, hi, last = hold_forward(*column_minmax(s.t, v, t0, dt, ncols), int(ln.hold / dt))
            reduced.append((ln, lo, hi, last))
        if top is None:
            peak = max(
                (float(np.nanmax(hi)) for _, _, hi, _ in reduced if np.any(~np.isnan(hi))), default=0.0
            )
            top = nice_ceiling(peak) if peak > 0 else 1.0
        codes = np.zeros((rows, plot_w), dtype=np.uint8)
        owner = np.full((rows, plot_w), -1, dtype=np.int16)
        prev_hi: np.ndarray | None = None
        for i, (ln, lo, hi, last) in enumerate(reduced):
            base_v = prev_hi if (ln.fill and ln.stack_on is not None) else None
            c = braille_codes(lo, hi, last, top, rows, fill=ln.fill, base=base_v)[:, :plot_w]
            codes |= c
            owner[c > 0] = i
            prev_hi = hi
        ref_row = -1
        if data.ref_line is not None and data.ref_line <= top:
            ref_row = int((1 - data.ref_line / top) * (rows * 4 - 1)) // 4
        mark_cols = np.empty(0, dtype=np.int64)
        if data.marks is not None and data.marks.t.size:
            mc = ((data.marks.t - t0) / dt).astype(np.int64) // 2
            mark_cols = np.unique(mc[(mc >= 0) & (mc < plot_w)])
        y_fmt = data.y_fmt or human
        styles = [base + color(ln.color) for ln, *_ in reduced]
        mark_style = base + RED_BOLD
        chars = _BRAILLE_NP[codes]  # (rows, plot_w) single characters
        if ref_row >= 0:
            chars[ref_row][codes[ref_row] == 0] = "┄"
        if mark_cols.size:
            chars[0, mark_cols] = "▼"
            owner[0, mark_cols] = -2
        row_text = np.ascontiguousarray(chars).view(f"<U{plot_w}")[:, 0]  # one string per row, no loop
        # blank cells take the colour of the run before them: fewer segments for the terminal to style
        blank = owner == -1
        if ref_row >= 0:
            blank[ref_row] = False
        idx = np.where(blank, 0, np.arange(plot_w)[None, :])
        idx[:, 0] = np.where(blank[:, 0], 0, idx[:, 0])
        filled_from = np.maximum.accumulate(idx, axis=1)
        owner = np.where(blank & (filled_from > 0), np.take_along_axis(owner, filled_from, axis=1), owner)
        strips = []
        # a row whose text and colours did not change since the last build reuses its strip (most rows:
        # a new point usually moves only the right edge)
        old = self._row_cache if self._row_base == (base, muted, tuple(styles)) else {}
        cache: dict[tuple[str, str, bytes], Strip] = {}
        for r in range(rows):
            label = y_fmt(top) if r == 0 else (y_fmt(0.0) if r == rows - 1 else "")
            text = str(row_text[r])
            own = owner[r]
            key = (label, text, own.tobytes())
            strip = old.get(key)
            if strip is None:
                segs = [Segment(label.rjust(GUTTER - 1)[: GUTTER - 1] + " ", muted)]
                cuts = [0, *(np.flatnonzero(own[1:] != own[:-1]) + 1).tolist(), plot_w]
                for a, b in itertools.pairwise(cuts):
                    o = int(own[a])
                    style = mark_style if o == -2 else (styles[o] if o >= 0 else muted)
                    segs.append(Segment(text[a:b], style))
                strip = Strip(segs, GUTTER + plot_w)
            cache[key] = strip
            strips.append(strip)
        self._row_cache = cache
        self._row_base = (base, muted, tuple(styles))
        return strips

    def _axis(self, window: float, plot_w: int, muted: Style) -> Strip:
        """Tick labels under the plot: -window ... now."""
        cells = [" "] * plot_w
        n_ticks = 4 if plot_w >= 40 else 2
        for k in range(n_ticks + 1):
            x = round(k * (plot_w - 1) / n_ticks)
            ago = window * (1 - k / n_ticks)
            label = "now" if k == n_ticks else f"-{fmt.duration(ago)}"
            pos = min(max(0, x - len(label) // 2), plot_w - len(label))
            if k == n_ticks:
                pos = plot_w - len(label)
            if k == 0:
                pos = 0
            if all(ch == " " for ch in cells[max(0, pos - 1) : pos + len(label) + 1]):
                cells[pos : pos + len(label)] = list(label)
        return Strip([Segment(" " * GUTTER + "".join(cells), muted)])
