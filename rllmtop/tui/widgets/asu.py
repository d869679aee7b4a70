"""The ASU panel: Accuracy, Service (tok/s) and User (TTFVT, E2E) numbers, overall and per class."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from rllmtop.metrics.analysis import ClassSummary
from rllmtop.view import CLIENT_BOTTLENECK_LAG_S, ViewSnapshot

__all__ = ["AsuPanel"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1:
        return f"{x * 1000:.0f}ms"
    return f"{x:.1f}s" if x < 100 else f"{x:.0f}s"


def _rows(c: ClassSummary) -> list[tuple[str, str]]:
    return [
        ("requests", f"{c.ok}/{c.requests}"),
        ("accuracy", _pct(c.accuracy) + (f" of {c.graded}" if c.graded else "")),
        ("tok/s", "-" if c.output_tps is None else f"{c.output_tps:,.0f}"),
        ("TTFVT p50/90/99", " ".join(_s(c.ttfvt[q]) for q in (50, 90, 99))),
        ("E2E p50/90/99", " ".join(_s(c.e2e[q]) for q in (50, 90, 99))),
        ("error rate", _pct(c.error_rate)),
        ("stragglers", str(c.stragglers)),
    ]


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
        self._cached: RenderableType = Text("")
        self.warning = False  # the client-bottleneck warning is showing

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        key = (snap.generation, snap.summary_version)
        self._snap = snap
        if key != self._key:
            self._key = key
            self.refresh(layout=True)

    def render(self) -> RenderableType:
        snap = self._snap
        if snap is None or snap.asu is None:
            return Text("no request has ended yet", style="dim")
        asu = snap.asu
        width = self.size.width
        classes = list(asu.classes) if len(asu.classes) > 1 else []
        cols = [asu.overall, *classes]
        max_cols = max(1, (width - 16) // 17)
        cols = cols[:max_cols]
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold", expand=False)
        table.add_column("", style="dim", no_wrap=True)
        for c in cols:
            table.add_column(c.name, justify="right", no_wrap=True)
        per = [_rows(c) for c in cols]
        for i, (label, _) in enumerate(per[0]):
            table.add_row(label, *(p[i][1] for p in per))
        lag = snap.send_lag_p99
        self.warning = snap.client_bottleneck
        lag_line = Text()
        lag_line.append("client send-lag p99 ", style="dim")
        lag_line.append(_s(lag))
        if snap.client_bottleneck:
            lag_line.append(
                f"  ⚠ client is the bottleneck (> {CLIENT_BOTTLENECK_LAG_S * 1000:.0f} ms): load is late",
                style="bold red",
            )
        return Group(table, lag_line)
