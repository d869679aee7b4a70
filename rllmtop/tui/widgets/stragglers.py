"""Stragglers: requests the rule flags, each with its reason, under the rule's own text."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from rllmtop.view import ViewSnapshot

__all__ = ["StragglerList"]


class StragglerList(Widget):
    DEFAULT_CSS = """
    StragglerList {
        height: 1fr;
        width: 1fr;
        overflow: hidden;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._snap: ViewSnapshot | None = None

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        self._snap = snap
        self.refresh()

    def render(self) -> Text:
        snap = self._snap
        out = Text(no_wrap=False, overflow="fold")
        if snap is None:
            return out
        out.append("rule: ", style="bold")
        out.append(snap.straggler_rule + "\n", style="dim")
        live = [s for s in snap.stragglers if not s.finished]
        done = [s for s in snap.stragglers if s.finished]
        if not snap.stragglers:
            out.append(
                "none so far" if snap.asu is not None else "waiting for finished requests", style="dim"
            )
            return out
        height = max(1, self.size.height - 2)
        shown = 0
        for s in (*live, *done):
            if shown >= height:
                break
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append("● " if not s.finished else "✓ ", style="red" if not s.finished else "dim")
            line.append(f"#{s.rid} ", style="bold")
            line.append(f"{s.cls} {s.phase.value} {s.age:.1f}s {s.reasoning} tok ")
            line.append(s.reason, style="red" if not s.finished else "")
            line.truncate(max(1, self.size.width), overflow="ellipsis")
            out.append_text(line)
            out.append("\n")
            shown += 1
        rest = len(snap.stragglers) - shown
        if rest > 0:
            out.append(f"… {rest} more ({len(live)} in flight, {len(done)} finished)", style="dim")
        return out
