"""The ASU panel: Accuracy, Service (tok/s) and User (TTFVT, E2E) numbers, one row per class.

Columns that do not fit are dropped, least important first. ``cut`` next to the accuracy counts the ok
requests the engine cut at ``max_tokens`` (finish_reason ``length``): they explain a low accuracy. With
goodput SLOs (the scenario's, published by the session) a ``good`` column counts the ok requests that met
them all. Below the table: what the percentiles cover (every ended request, or the most recent ones; counts
are always exact), the goodput, the client's send-lag p99 and event-loop lateness (red when the client
itself is the bottleneck), and every warning in words (the client was late, the simulator drifted, a sender
worker died, a worker's clock is off)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from rllmtop.metrics.analysis import ClassSummary
from rllmtop.summary import goodput_line
from rllmtop.view import CLIENT_BOTTLENECK_LAG_S, ViewSnapshot

__all__ = ["AsuPanel", "latency_triple"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%" if x in (0.0, 1.0) else f"{100 * x:.1f}%"


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1:
        return f"{x * 1000:.0f}ms"
    return f"{x:.1f}s" if x < 100 else f"{x:.0f}s"


def latency_triple(d: dict[int, float | None]) -> str:
    """p50/p90/p99 in one unit: ``0.8/1.7/2.8s`` (or ``-``)."""
    vals = [d.get(q) for q in (50, 90, 99)]
    if all(v is None for v in vals):
        return "-"
    top = max(v for v in vals if v is not None)
    if top < 1:
        return "/".join("-" if v is None else f"{v * 1000:.0f}" for v in vals) + "ms"
    fmt = "{:.1f}" if top < 100 else "{:.0f}"
    return "/".join("-" if v is None else fmt.format(v) for v in vals) + "s"


@dataclass(frozen=True, slots=True)
class _Col:
    title: str
    value: Callable[[ClassSummary], str]
    priority: int  # lower = kept longer
    width: int


_COLS = (
    _Col("class", lambda c: c.name, 0, 8),
    _Col("ok/n", lambda c: f"{c.ok}/{c.requests}", 2, 9),
    _Col("acc", lambda c: _pct(c.accuracy), 1, 6),
    _Col("cut", lambda c: str(c.truncated), 1, 4),
    _Col("tok/s", lambda c: "-" if c.output_tps is None else f"{c.output_tps:,.0f}", 1, 7),
    _Col("TTFVT", lambda c: latency_triple(c.ttfvt), 0, 12),
    _Col("E2E", lambda c: latency_triple(c.e2e), 1, 12),
    _Col("err", lambda c: _pct(c.error_rate), 1, 6),
    _Col("strag", lambda c: str(c.stragglers), 3, 5),
)
_GOOD = _Col("good", lambda c: str(c.good), 1, 5)  # only with goodput SLOs


class AsuPanel(Widget):
    """Rebuilt only when the summary changed (``ViewSnapshot.summary_version``) or the size did."""

    DEFAULT_CSS = """
    AsuPanel {
        height: auto;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._snap: ViewSnapshot | None = None
        self._key: object = None
        self.warning = False  # the client-bottleneck warning is showing
        self.alerts: list[str] = []  # the warnings drawn last (tests)
        self.columns: list[str] = []  # titles of the columns drawn last (tests)

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        lag = snap.client_lag
        key = (snap.generation, snap.summary_version, lag.version, tuple(a.text for a in snap.alerts))
        self._snap = snap
        if key != self._key:
            self._key = key
            self.refresh(layout=True)

    def render(self) -> RenderableType:
        snap = self._snap
        if snap is None:
            return Text("no request has ended yet", style="dim")
        self.alerts = [a.text for a in snap.alerts]
        warnings = [Text("⚠ " + a.text, style="bold red") for a in snap.alerts]
        if snap.asu is None:
            return Group(Text("no request has ended yet", style="dim"), *warnings)
        asu = snap.asu
        rows = [asu.overall, *asu.classes] if len(asu.classes) > 1 else [asu.overall]
        cols = list(_COLS)
        if asu.goodput:
            cols.insert(cols.index(next(c for c in cols if c.title == "err")), _GOOD)
        width = self.size.width
        while sum(c.width + 1 for c in cols) > width and len(cols) > 2:
            drop = max(cols, key=lambda c: (c.priority, cols.index(c)))
            cols.remove(drop)
        self.columns = [c.title for c in cols]
        table = Table(box=None, padding=(0, 1, 0, 0), show_header=True, header_style="bold", expand=False)
        for c in cols:
            table.add_column(c.title, justify="left" if c.title == "class" else "right", no_wrap=True)
        for i, cs in enumerate(rows):
            table.add_row(*(c.value(cs) for c in cols), style="bold" if i == 0 and len(rows) > 1 else None)
        lag = snap.send_lag_p99
        self.warning = snap.client_bottleneck
        lag_line = Text(no_wrap=True, overflow="ellipsis")
        lag_line.append("client send-lag p99 ", style="dim")
        lag_line.append(_s(lag))
        if snap.client_bottleneck:
            lag_line.append(
                f"  ⚠ the client is the bottleneck (> {CLIENT_BOTTLENECK_LAG_S * 1000:.0f} ms): sends are late",
                style="bold red",
            )
        lines: list[RenderableType] = [lag_line]
        if snap.client_lag_worst is not None:  # the client's heartbeat (ClientHealth)
            loop = Text(no_wrap=True, overflow="ellipsis")
            loop.append("client loop lateness ", style="dim")
            loop.append(_s(snap.client_lag.last))
            loop.append(" now, ", style="dim")
            loop.append(_s(snap.client_lag_worst), style="bold red" if snap.alerts else "")
            loop.append(" worst this session", style="dim")
            lines.append(loop)
        what = "TTFVT, E2E: p50/p90/p99 of ok requests"
        if snap.summary_recent is not None:
            k, n = snap.summary_recent
            what += f", the most recent {k:,} of {n:,} (counts exact)"
        note = Text(what, style="dim", no_wrap=True, overflow="ellipsis")
        notes: list[RenderableType] = [note]
        good = goodput_line(asu)  # the headless summary's words
        if good:
            notes.append(Text(good, no_wrap=True, overflow="ellipsis"))
        return Group(table, *notes, *lines, *warnings)
