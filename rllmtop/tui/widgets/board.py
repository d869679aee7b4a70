"""The request board: requests in flight (and those that just ended), sortable and filterable.

Only the visible rows are drawn (``render_line``); sorting and filtering touch the snapshot's rows once per
refresh, O(rows log rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from rllmtop.events import Phase
from rllmtop.view import BoardRow, ViewSnapshot

__all__ = ["FILTERS", "SORTS", "RequestBoard"]

PHASE_STYLES: dict[Phase, str] = {
    Phase.QUEUED: "grey50",
    Phase.WAITING: "yellow",
    Phase.THINKING: "magenta",
    Phase.ANSWERING: "green",
    Phase.DONE: "cyan",
    Phase.FAILED: "red",
}
_PHASE_ORDER = {p: i for i, p in enumerate(Phase)}


def _none_last(x: float | None) -> float:
    return float("inf") if x is None else x


SORTS: dict[str, Callable[[BoardRow], object]] = {
    "age": lambda r: r.age,
    "reasoning": lambda r: r.reasoning,
    "answer": lambda r: r.answer,
    "ttft": lambda r: _none_last(r.ttft),
    "ttfvt": lambda r: _none_last(r.ttfvt),
    "phase": lambda r: _PHASE_ORDER[r.phase],
    "class": lambda r: r.cls,
    "id": lambda r: r.rid,
}
"""Sort keys, in the order ``s`` cycles through them."""

FILTERS: dict[str, Callable[[BoardRow], bool]] = {
    "all": lambda r: True,
    "active": lambda r: r.phase in (Phase.WAITING, Phase.THINKING, Phase.ANSWERING),
    "thinking": lambda r: r.phase is Phase.THINKING,
    "answering": lambda r: r.phase is Phase.ANSWERING,
    "waiting": lambda r: r.phase in (Phase.QUEUED, Phase.WAITING),
    "stragglers": lambda r: r.straggler is not None,
    "ended": lambda r: r.phase in (Phase.DONE, Phase.FAILED),
}
"""Phase filters, in the order ``f`` cycles through them."""


@dataclass(frozen=True, slots=True)
class _Col:
    title: str
    width: int
    sort: str | None
    right: bool = True


_COLS = (
    _Col("id", 7, "id"),
    _Col("class", 12, "class", right=False),
    _Col("phase", 9, "phase", right=False),
    _Col("age", 7, "age"),
    _Col("reason", 7, "reasoning"),
    _Col("answer", 6, "answer"),
    _Col("ttft", 6, "ttft"),
    _Col("ttfvt", 6, "ttfvt"),
)


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}s" if x < 100 else f"{x:.0f}s"


def _cells(r: BoardRow) -> tuple[str, ...]:
    return (
        str(r.rid),
        r.cls,
        r.phase.value,
        _secs(r.age),
        str(r.reasoning),
        str(r.answer),
        _secs(r.ttft),
        _secs(r.ttfvt),
    )


class RequestBoard(ScrollView, can_focus=True):
    """Rows of :class:`BoardRow`. Keys (when focused): up/down/page keys move the cursor."""

    DEFAULT_CSS = """
    RequestBoard {
        height: 1fr;
        width: 1fr;
        overflow-y: auto;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "cursor(-10)", "page up", show=False),
        Binding("pagedown", "cursor(10)", "page down", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.sort_key = "age"
        self.sort_reverse = True  # oldest first
        self.phase_filter = "all"
        self.text_filter = ""
        self.cursor = 0
        self.rows: tuple[BoardRow, ...] = ()  # after sorting and filtering (what is shown)
        self.total = 0  # rows before filtering
        self._snap: ViewSnapshot | None = None
        self._dirty = True

    # ------------------------------------------------------------------ controls

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        self._snap = snap
        self._dirty = True
        self.refresh()

    def cycle_sort(self) -> str:
        keys = list(SORTS)
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
        self.sort_reverse = self.sort_key in ("age", "reasoning", "answer", "ttft", "ttfvt")
        self._changed()
        return self.sort_key

    def reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._changed()

    def cycle_filter(self) -> str:
        keys = list(FILTERS)
        self.phase_filter = keys[(keys.index(self.phase_filter) + 1) % len(keys)]
        self._changed()
        return self.phase_filter

    def set_text_filter(self, text: str) -> None:
        self.text_filter = text.strip()
        self._changed()

    def describe(self) -> str:
        """E.g. ``sort age ▼ · filter thinking · 12 of 40``."""
        arrow = "▼" if self.sort_reverse else "▲"
        parts = [f"sort {self.sort_key} {arrow}"]
        if self.phase_filter != "all":
            parts.append(f"filter {self.phase_filter}")
        if self.text_filter:
            parts.append(f"/{self.text_filter}")
        parts.append(f"{len(self.rows)} of {self.total}")
        return " · ".join(parts)

    def action_cursor(self, delta: int) -> None:
        self._prepare()
        self.cursor = min(max(self.cursor + delta, 0), max(0, len(self.rows) - 1))
        body = max(1, self.size.height - 1)
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= self.scroll_y + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False)
        self.refresh()

    def _changed(self) -> None:
        self._dirty = True
        self.cursor = 0
        self.scroll_to(y=0, animate=False)
        self._prepare()
        self.refresh()

    # ------------------------------------------------------------------ data

    def _prepare(self) -> None:
        if not self._dirty or self._snap is None:
            return
        self._dirty = False
        rows = self._snap.board
        self.total = len(rows)
        keep = FILTERS[self.phase_filter]
        text = self.text_filter.lower()
        if self.phase_filter != "all" or text:
            rows = tuple(
                r
                for r in rows
                if keep(r)
                and (not text or text in r.cls.lower() or text == str(r.rid) or text in r.phase.value)
            )
        key = SORTS[self.sort_key]
        self.rows = tuple(sorted(rows, key=key, reverse=self.sort_reverse))  # type: ignore[arg-type]
        self.cursor = min(self.cursor, max(0, len(self.rows) - 1))
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        if self.parent is not None and hasattr(self.parent, "border_subtitle"):
            self.parent.border_subtitle = self.describe()

    # ------------------------------------------------------------------ drawing

    def _layout(self, width: int) -> list[tuple[_Col, int]]:
        """Columns that fit, with their widths; the class column takes the slack; reason fills the rest."""
        cols = [(c, c.width) for c in _COLS]
        used = sum(w + 1 for _, w in cols)
        while used > width and len(cols) > 3:
            _, w = cols.pop()
            used -= w + 1
        return cols

    def render_line(self, y: int) -> Strip:
        self._prepare()
        width = self.size.width
        base = self.rich_style
        cols = self._layout(width)
        if y == 0:
            segs = []
            for c, w in cols:
                title = c.title + ("▼" if self.sort_reverse else "▲") if c.sort == self.sort_key else c.title
                segs.append(
                    Segment(
                        (title.rjust(w) if c.right else title.ljust(w)) + " ",
                        base + Style(bold=True, underline=True),
                    )
                )
            used = sum(w + 1 for _, w in cols)
            if width - used > 8:
                segs.append(Segment("straggler".ljust(width - used), base + Style(bold=True, underline=True)))
            return Strip(segs).crop_extend(0, width, base)
        i = y - 1 + int(self.scroll_y)
        if i >= len(self.rows):
            if not self.rows and y == 1:
                msg = "no requests" if self.total == 0 else "no requests match the filter"
                return Strip([Segment(msg, base + Style(dim=True))]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        r = self.rows[i]
        cells = _cells(r)
        segs = []
        row_style = base
        if i == self.cursor and self.has_focus:
            row_style = base + Style(reverse=True)
        for (c, w), text in zip(cols, cells, strict=False):
            text = text[:w]
            style = row_style
            if c.title == "phase":
                style = row_style + Style(color=PHASE_STYLES[r.phase])
            segs.append(Segment((text.rjust(w) if c.right else text.ljust(w)) + " ", style))
        used = sum(w + 1 for _, w in cols)
        if r.straggler is not None:
            rest = width - used
            flag = ("⚠ " + r.straggler)[: max(0, rest)] if rest > 8 else "⚠"
            segs.append(Segment(flag, row_style + Style(color="red", bold=True)))
        return Strip(segs).crop_extend(0, width, row_style if i == self.cursor and self.has_focus else base)
