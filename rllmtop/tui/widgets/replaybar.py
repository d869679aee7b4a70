"""The replay progress bar: play/pause, speed, position / duration."""

from __future__ import annotations

from typing import Protocol

from rich.text import Text
from textual.widget import Widget

from rllmtop.view import format_elapsed

__all__ = ["ReplayBar", "ReplayControls"]


class ReplayControls(Protocol):
    """What the TUI needs of a replay source (``session.replay``)."""

    speed: float

    @property
    def position(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def paused(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def toggle_pause(self) -> None: ...
    def step(self, seconds: float) -> None: ...
    def seek(self, t: float) -> None: ...
    def now(self) -> float: ...


class ReplayBar(Widget):
    DEFAULT_CSS = """
    ReplayBar {
        height: 1;
        width: 1fr;
        background: $boost;
    }
    """

    def __init__(self, replay: ReplayControls, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.replay = replay
        self.text = ""

    def tick(self) -> None:
        self.refresh()

    def render(self) -> Text:
        r = self.replay
        pos, dur = r.position, max(r.duration, 1e-9)
        if r.finished and pos >= dur:
            icon = "■ end"
        elif r.paused:
            icon = "⏸ paused"
        else:
            icon = "▶ playing"
        left = f" {icon}  {r.speed:g}x "
        right = f" {format_elapsed(pos)} / {format_elapsed(dur)} "
        bar_w = max(4, self.size.width - len(left) - len(right))
        filled = min(bar_w, round(bar_w * min(1.0, pos / dur)))
        out = Text(no_wrap=True)
        out.append(left, style="bold")
        out.append("━" * filled, style="cyan")
        out.append("─" * (bar_w - filled), style="dim")
        out.append(right)
        self.text = out.plain
        return out
