"""Reasoning-length distribution of finished requests per class/difficulty: one strip per group."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from rllmtop.tui.widgets.chart import human
from rllmtop.view import Distribution, ViewSnapshot

__all__ = ["ReasoningDist", "strip"]

_BLOCKS = " ▁▂▃▄▅▆▇█"


def strip(counts: tuple[int, ...], width: int) -> str:
    """Counts as a ``width``-cell block strip (bins merged or repeated to fit), scaled to its own max."""
    n = len(counts)
    if n == 0 or width <= 0:
        return ""
    cells = []
    for i in range(width):
        a = i * n // width
        b = max(a + 1, (i + 1) * n // width)
        cells.append(sum(counts[a:b]) / (b - a))
    top = max(cells) or 1.0
    return "".join(_BLOCKS[0 if c == 0 else max(1, round(8 * c / top))] for c in cells)


class ReasoningDist(Widget):
    """Rebuilt only when the distribution changed or the widget was resized."""

    DEFAULT_CSS = """
    ReasoningDist {
        height: auto;
        max-height: 12;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._dist: Distribution | None = None
        self._key: object = None

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        key = (snap.generation, snap.summary_version)
        if key != self._key:
            self._key = key
            self._dist = snap.distribution
            self.refresh(layout=True)

    def render(self) -> Text:
        dist = self._dist
        out = Text(no_wrap=True, overflow="ellipsis")
        if dist is None or not dist.groups:
            out.append("no finished requests yet", style="dim")
            return out
        label_w = min(18, max(len(g.label) for g in dist.groups))
        stats_w = 25
        bar_w = max(8, self.size.width - label_w - stats_w - 3)
        for g in dist.groups:
            p = g.pcts
            out.append(g.label[:label_w].ljust(label_w) + " ", style="bold")
            out.append(strip(g.counts, bar_w), style="magenta")
            out.append(
                f" n={g.n} p50 {human(p[50] or 0)} p90 {human(p[90] or 0)}".ljust(stats_w)[:stats_w] + "\n",
                style="dim",
            )
        out.append(
            " " * (label_w + 1) + "0".ljust(bar_w - 8) + f"{human(dist.edges[-1])} tok".rjust(8), style="dim"
        )
        return out
