"""The fleet table: one row per engine (health, KV %, running, waiting, tok/s, preemptions, version).

Shown when the session watches two or more engines. The engine whose charts are in focus is marked; the
table scrolls (64 engines do not fit) and keeps the focused row in view. Only the visible rows are drawn,
and a refresh repaints only the lines whose text changed."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class _Col:
    title: str
    width: int
    right: bool = True


_COLS = (
    _Col("engine", 18, right=False),
    _Col("health", 9, right=False),
    _Col("KV", 5),
    _Col("run", 5),
    _Col("wait", 5),
    _Col("tok/s", 7),
    _Col("preempt", 7),
    _Col("version", 8, right=False),
)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def fleet_cells(e: EngineRow) -> tuple[str, ...]:
    """The row's cells, in column order."""
    return (
        e.name,
        e.health,
        "-" if e.kv is None else f"{100 * e.kv:.0f}%",
        _num(e.running),
        _num(e.waiting),
        _num(e.tok_s),
        _num(e.preemptions),
        e.version or e.kind,
    )


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
        """Columns that fit (the version, then preemptions, ... are dropped first); the engine column
        takes what is left, at least 12 cells."""
        got = self._layouts.get(width)
        if got is not None:
            return got
        cols = list(_COLS)
        while len(cols) > 3 and sum(c.width + 1 for c in cols) > width:
            cols.pop()
        spare = width - sum(c.width + 1 for c in cols)
        out = []
        for c in cols:
            w = c.width
            if c.title == "engine":
                w = max(12, w + min(spare, 12)) if spare > 0 else max(12, w + spare)
            out.append((c, w))
        self._layouts[width] = out
        return out

    def _line(self, e: EngineRow, width: int) -> str:
        parts = []
        for (c, w), text in zip(self._layout(width), fleet_cells(e), strict=False):
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
