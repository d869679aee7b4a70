"""The fleet table: one row per engine (health, KV %, running, waiting, tok/s, preemptions, GPU telemetry
where an engine serves it, version).

Shown when the session watches two or more engines (engines that appear mid-run join it). The engine whose
charts are in focus is marked; the table scrolls (64 engines do not fit) and keeps the focused row in view.
The GPU columns (utilisation: the mean over the engine's GPUs; framebuffer used and power: summed) appear
once some engine serves GPU telemetry. Columns that do not fit are dropped, least useful first (version,
power, memory, preemptions, ...). Only the visible rows are drawn, and a refresh repaints only the lines
whose text changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from rllmtop.tui.widgets.styles import BOLD, DIM, HEADING, REVERSE, CachedStyle, color
from rllmtop.view import EngineRow, FleetSpread, ViewSnapshot

__all__ = ["HEALTH_STYLES", "FleetTable", "fleet_cells", "spread_text"]

HEALTH_STYLES: dict[str, str] = {
    "up": "green",
    "restarted": "yellow",
    "stale": "dark_orange",
    "down": "red",
    "no data": "grey50",
}


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:.0f}G" if x >= 1024 else f"{x:.0f}M"


@dataclass(frozen=True, slots=True)
class _Col:
    title: str
    width: int
    cell: Callable[[EngineRow], str]
    drop: int  # higher: dropped sooner when the table is narrow (0: never)
    right: bool = True
    gpu: bool = False  # shown only when some engine serves GPU telemetry


_COLS = (
    _Col("engine", 18, lambda e: e.name, 0, right=False),
    _Col("health", 9, lambda e: e.health, 0, right=False),
    _Col("KV", 5, lambda e: "-" if e.kv is None else f"{100 * e.kv:.0f}%", 0),
    _Col("run", 5, lambda e: _num(e.running), 3),
    _Col("wait", 5, lambda e: _num(e.waiting), 4),
    _Col("tok/s", 7, lambda e: _num(e.tok_s), 5),
    _Col("preempt", 7, lambda e: _num(e.preemptions), 7),
    _Col("GPU", 4, lambda e: "-" if e.gpu_util is None else f"{e.gpu_util:.0f}%", 6, gpu=True),
    _Col("GPU mem", 7, lambda e: _mib(e.gpu_mem_mib), 8, gpu=True),
    _Col("power", 6, lambda e: "-" if e.gpu_power_w is None else f"{e.gpu_power_w:.0f}W", 9, gpu=True),
    _Col("version", 8, lambda e: e.version or e.kind, 10, right=False),
)


def fleet_cells(e: EngineRow, gpu: bool = False) -> tuple[str, ...]:
    """The row's cells, in column order (with the GPU columns when ``gpu``)."""
    return tuple(c.cell(e) for c in _COLS if gpu or not c.gpu)


def spread_text(n: int, spread: FleetSpread) -> str:
    """The imbalance in one line: ``2 engines · KV 12-98% · waiting 0-40``."""
    parts = [f"{n} engines"]
    if spread.kv is not None:
        lo, hi = spread.kv
        parts.append(f"KV {100 * lo:.0f}-{100 * hi:.0f}%")
    if spread.running is not None:
        parts.append(f"running {spread.running[0]:.0f}-{spread.running[1]:.0f}")
    if spread.waiting is not None:
        parts.append(f"waiting {spread.waiting[0]:.0f}-{spread.waiting[1]:.0f}")
    return " · ".join(parts)


class FleetTable(CachedStyle, ScrollView, can_focus=False):
    """Rows of :class:`EngineRow`; the first line holds the column titles (it does not scroll)."""

    DEFAULT_CSS = """
    FleetTable {
        height: 1fr;
        width: 1fr;
        overflow-y: auto;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    """

    HEADER_LINES = 1

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.engines: tuple[EngineRow, ...] = ()
        self.focus_id: str | None = None
        self.show_gpu = False  # some engine serves GPU telemetry: the GPU columns are shown
        self._texts: list[tuple[int, str, bool]] = []
        self._layouts: dict[int, list[tuple[_Col, int]]] = {}

    @property
    def lines(self) -> list[str]:
        """Plain text of every row, without the header (tests)."""
        return [self._line(e, 200).rstrip() for e in self.engines]

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        """Take a snapshot; repaint the visible rows whose text changed (all rows if engines came)."""
        engines = snap.engines
        focus_moved = snap.focus != self.focus_id
        self.focus_id = snap.focus
        gpu = any(e.gpus for e in engines)
        if gpu != self.show_gpu:  # the GPU columns come (or go): every line changes
            self.show_gpu = gpu
            self.engines = ()
        width = self.scrollable_content_region.width
        top = int(self.scroll_y)
        body = max(0, self.size.height - self.HEADER_LINES)
        texts = [
            (top + j, self._line(e, width), e.id == snap.focus)
            for j, e in enumerate(engines[top : top + body])
        ]
        if len(engines) != len(self.engines):
            self.engines = engines
            self._texts = texts
            self.virtual_size = Size(width, len(engines) + self.HEADER_LINES)
            self.refresh()
        else:
            self.engines = engines
            old = self._texts
            self._texts = texts
            if len(old) != len(texts):
                self.refresh()
            else:
                for a, b in zip(old, texts, strict=True):
                    if a != b:
                        self.refresh_line(b[0] + self.HEADER_LINES)
        if focus_moved:
            self._scroll_to_focus()

    def _scroll_to_focus(self) -> None:
        ids = [e.id for e in self.engines]
        if self.focus_id not in ids:
            return
        i = ids.index(self.focus_id)
        body = max(1, self.size.height - self.HEADER_LINES)
        if i < self.scroll_y:
            self.scroll_to(y=i, animate=False)
        elif i >= self.scroll_y + body:
            self.scroll_to(y=i - body + 1, animate=False)
        self.refresh()

    def _layout(self, width: int) -> list[tuple[_Col, int]]:
        """Columns that fit (the version, then the GPU power, ... are dropped first); the engine column
        takes what is left, at least 12 cells."""
        key = width if not self.show_gpu else -width - 1
        got = self._layouts.get(key)
        if got is not None:
            return got
        cols = [c for c in _COLS if self.show_gpu or not c.gpu]
        while len(cols) > 3 and sum(c.width + 1 for c in cols) > width:
            cols.remove(max(cols, key=lambda c: c.drop))
        spare = width - sum(c.width + 1 for c in cols)
        out = []
        for c in cols:
            w = c.width
            if c.title == "engine":
                w = max(12, w + min(spare, 12)) if spare > 0 else max(12, w + spare)
            out.append((c, w))
        self._layouts[key] = out
        return out

    def _line(self, e: EngineRow, width: int) -> str:
        parts = []
        for c, w in self._layout(width):
            text = c.cell(e)
            if len(text) > w:
                text = text[: w - 1] + "…" if c.title == "engine" else text[:w]
            parts.append(text.rjust(w) if c.right else text.ljust(w))
        return " ".join(parts)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.base_style
        if y == 0:
            head = "".join(
                ((c.title.rjust(w) if c.right else c.title.ljust(w)) + " ") for c, w in self._layout(width)
            )
            return Strip([Segment(head, base + HEADING)]).crop_extend(0, width, base)
        i = y - self.HEADER_LINES + int(self.scroll_y)
        if i >= len(self.engines):
            return Strip.blank(width, base)
        e = self.engines[i]
        focused = e.id == self.focus_id
        style = base + REVERSE if focused else base
        text = self._line(e, width)
        cols = self._layout(width)
        name_w = cols[0][1] + 1
        health_w = cols[1][1] + 1 if len(cols) > 1 else 0
        segs = [
            Segment(text[:name_w], style + BOLD if focused else style),
            Segment(text[name_w : name_w + health_w], style + _health_style(e.health)),
            Segment(
                text[name_w + health_w :], style + (DIM if e.health not in ("up", "restarted") else Style())
            ),
        ]
        return Strip(segs).crop_extend(0, width, style)


def _health_style(health: str) -> Style:
    return color(HEALTH_STYLES.get(health, "grey50"))
