"""The request board: requests in flight (and those that just ended), sortable and filterable.

Only the visible rows are drawn (``render_line``); sorting and filtering touch the snapshot's rows once per
refresh, O(rows log rows). A new snapshot repaints only the lines whose text changed; ages past 10 s are
whole seconds, so a long request's line changes once a second rather than at every refresh. When more than
one sender worker sent requests (``--workers``, Ray), a ``worker`` column names the one that sent each
(``3@node`` where its node is known).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from rllmtop.events import Phase
from rllmtop.tui.widgets.styles import BOLD, DIM, HEADING, RED_BOLD, REVERSE, CachedStyle
from rllmtop.view import BoardRow, ViewSnapshot, worker_label

__all__ = ["FILTERS", "SORTS", "ReasonCache", "RequestBoard"]

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
    "worker": lambda r: (r.worker, r.node),
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


_WORKER = _Col("worker", 8, "worker", right=False)  # only when several workers sent requests
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
    if x < 1:
        return f"{x * 1000:.0f}ms"  # TTFTs are milliseconds: "0.0s" would hide them
    return f"{x:.1f}s" if x < 100 else f"{x:.0f}s"


def _age(x: float) -> str:
    return _secs(x) if x < 10 else f"{x:.0f}s"


class ReasonCache:
    """The straggler reason each request shows, renewed when its shown age changes (whole seconds past
    10 s), not at every refresh: the reason's own run time would otherwise repaint the line 4 times a
    second. Keeps only the requests asked about since the last :meth:`prune`."""

    __slots__ = ("_now", "_old")

    def __init__(self) -> None:
        self._old: dict[int, tuple[str, str]] = {}
        self._now: dict[int, tuple[str, str]] = {}

    def get(self, rid: int, age: str, reason: str | None) -> str | None:
        if reason is None:
            return None
        got = self._now.get(rid) or self._old.get(rid)
        if got is None or got[0] != age:
            got = (age, reason)
        self._now[rid] = got
        return got[1]

    def prune(self) -> None:
        self._old, self._now = self._now, {}


def _cells(r: BoardRow, workers: bool = False) -> tuple[str, ...]:
    """The row's cells in column order; the worker column (after the class) when ``workers``."""
    head = (str(r.rid), r.cls, worker_label(r.worker, r.node)) if workers else (str(r.rid), r.cls)
    return (
        *head,
        r.phase.value,
        _age(r.age),
        str(r.reasoning),
        str(r.answer),
        _secs(r.ttft),
        _secs(r.ttfvt),
    )


class RequestBoard(CachedStyle, ScrollView, can_focus=True, inherit_bindings=False):
    """Rows of :class:`BoardRow`. Keys (when focused): up/down/page keys move the cursor. It does not take
    ScrollView's home/end/left/right: those seek in a replay."""

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

    HEADER_LINES = 2  # a status line (progress, sort, filter), then the column titles

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.sort_key = "age"
        self.sort_reverse = True  # oldest first
        self.phase_filter = "all"
        self.text_filter = ""
        self.cursor = 0
        self._rows: tuple[BoardRow, ...] = ()
        self.total = 0  # rows before filtering
        self._snap: ViewSnapshot | None = None
        self._dirty = True
        self._cols_cache: tuple[int, list[tuple[_Col, int]], int] | None = None
        self._keys: list[object] = []  # what each visible line showed at the last refresh
        self._reasons = ReasonCache()
        self.show_workers = False  # several workers sent requests: the worker column is shown

    @property
    def rows(self) -> tuple[BoardRow, ...]:
        """The rows as shown: filtered and sorted, from the latest snapshot."""
        self._prepare()
        return self._rows

    # ------------------------------------------------------------------ controls

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        """Take a snapshot; repaint the lines whose text changed (all of them if the rows moved)."""
        self._snap = snap
        self._dirty = True
        workers = snap.workers > 1
        if workers != self.show_workers:  # the worker column comes: every line changes
            self.show_workers = workers
            self._keys = []
        width, height = self.size
        if not width or not height or not self.region:  # hidden
            self._keys = []
            self.refresh()
            return
        self._prepare()
        old, new = self._keys, self._line_keys(height)
        self._keys = new
        if len(old) != len(new):
            self.refresh()
            return
        for y, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                self.refresh(Region(0, y, width, 1))

    def _line_keys(self, height: int) -> list[object]:
        """What each visible line shows (compared between snapshots to repaint only what changed)."""
        snap = self._snap
        status = (
            (snap.progress.line(), sum(1 for s in snap.stragglers if not s.finished), self.describe())
            if snap is not None
            else None
        )
        keys: list[object] = [status, (self.sort_key, self.sort_reverse)]
        top = int(self.scroll_y)
        rows = self._rows
        focus = self.has_focus
        reasons = self._reasons
        reasons.prune()
        for i in range(top, top + max(0, height - self.HEADER_LINES)):
            if i < len(rows):
                r = rows[i]
                cells = _cells(r, self.show_workers)
                age = cells[3 + self.show_workers]
                keys.append((cells, reasons.get(r.rid, age, r.straggler), i == self.cursor and focus))
            else:
                keys.append(None if rows else self.total)
        return keys

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

    def on_focus(self) -> None:
        self._keys = []
        self.refresh()

    def on_blur(self) -> None:
        self._keys = []
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self._prepare()
        self.cursor = min(max(self.cursor + delta, 0), max(0, len(self.rows) - 1))
        body = max(1, self.size.height - self.HEADER_LINES)
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= self.scroll_y + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False)
        self._keys = []
        self.refresh()

    def _changed(self) -> None:
        self._dirty = True
        self._keys = []
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
        self._rows = tuple(sorted(rows, key=key, reverse=self.sort_reverse))  # type: ignore[arg-type]
        self.cursor = min(self.cursor, max(0, len(self._rows) - 1))
        size = Size(self.size.width, len(self._rows) + self.HEADER_LINES)
        if size != self.virtual_size:
            self.virtual_size = size

    # ------------------------------------------------------------------ drawing

    def _layout(self, width: int) -> tuple[list[tuple[_Col, int]], int]:
        """Columns that fit (dropped from the right), and the cells they use; the straggler reason gets
        the rest."""
        key = -width - 1 if self.show_workers else width
        if self._cols_cache is not None and self._cols_cache[0] == key:
            return self._cols_cache[1], self._cols_cache[2]
        cols = [(c, c.width) for c in _COLS]
        if self.show_workers:
            cols.insert(2, (_WORKER, _WORKER.width))
        used = sum(w + 1 for _, w in cols)
        while used > width and len(cols) > 3 + self.show_workers:
            _, w = cols.pop()
            used -= w + 1
        self._cols_cache = (key, cols, used)
        return cols, used

    def render_line(self, y: int) -> Strip:
        self._prepare()
        width = self.scrollable_content_region.width  # without the scrollbar
        base = self.base_style
        cols, used = self._layout(width)
        if y == 0:
            return self._status_line(width, base)
        if y == 1:
            head = base + HEADING
            parts = []
            for c, w in cols:
                title = c.title + ("▼" if self.sort_reverse else "▲") if c.sort == self.sort_key else c.title
                parts.append((title.rjust(w) if c.right else title.ljust(w)) + " ")
            if width - used > 8:
                parts.append("straggler".ljust(width - used))
            return Strip([Segment("".join(parts), head)]).crop_extend(0, width, base)
        i = y - self.HEADER_LINES + int(self.scroll_y)
        if i >= len(self.rows):
            if not self.rows and y == self.HEADER_LINES:
                msg = "no requests" if self.total == 0 else "no requests match the filter"
                return Strip([Segment(msg, base + DIM)]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        r = self.rows[i]
        row_style = base + REVERSE if i == self.cursor and self.has_focus else base
        cells = _cells(r, self.show_workers)
        ph = 2 + self.show_workers  # the phase column
        # three segments: up to the phase, the coloured phase, the rest
        fmt = [
            (text[:w].rjust(w) if c.right else text[:w].ljust(w))
            for (c, w), text in zip(cols, cells, strict=False)
        ]
        segs = [Segment(" ".join(fmt[:ph]) + " ", row_style)]
        if len(fmt) > ph:
            segs.append(Segment(fmt[ph] + " ", row_style + self._phase_styles[r.phase]))
            segs.append(Segment(" ".join(fmt[ph + 1 :]) + " " if len(fmt) > ph + 1 else "", row_style))
        reason = self._reasons.get(r.rid, cells[ph + 1], r.straggler)
        if reason is not None:
            rest = width - used
            flag = ("⚠ " + reason)[: max(0, rest)] if rest > 8 else "⚠"
            segs.append(Segment(flag, row_style + RED_BOLD))
        return Strip(segs).crop_extend(0, width, row_style)

    def _status_line(self, width: int, base: Style) -> Strip:
        """Progress counts on the left, sort / filter / count on the right."""
        snap = self._snap
        left = snap.progress.line() if snap is not None else ""
        n_strag = sum(1 for s in snap.stragglers if not s.finished) if snap is not None else 0
        right = self.describe()
        segs = [Segment(left, base + BOLD)]
        if n_strag:
            segs.append(Segment(f" · ⚠ {n_strag} straggling", base + RED_BOLD))
        used = len(left) + (len(segs[-1].text) if n_strag else 0)
        pad = width - used - len(right)
        if pad >= 2:
            segs.append(Segment(" " * pad + right, base + DIM))
        return Strip(segs).crop_extend(0, width, base)

    _phase_styles: ClassVar[dict[Phase, Style]] = {p: Style(color=c) for p, c in PHASE_STYLES.items()}

    def _phase_style(self, phase: Phase) -> Style:
        return self._phase_styles[phase]
