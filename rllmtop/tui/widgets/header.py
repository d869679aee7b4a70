"""The one-line header: engine, model, scenario, state, elapsed time, recording."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from rllmtop.events import SessionState
from rllmtop.view import ViewSnapshot, format_elapsed

__all__ = ["STATE_STYLES", "HeaderBar"]

STATE_STYLES: dict[SessionState, str] = {
    SessionState.STARTING: "black on yellow",
    SessionState.RUNNING: "black on green",
    SessionState.DRAINING: "black on dark_orange",
    SessionState.DONE: "black on cyan",
    SessionState.FAILED: "white on red",
    SessionState.INTERRUPTED: "black on magenta",
    SessionState.ENGINE_DIED: "white on red",
    SessionState.INCOMPLETE: "white on red",
}


class HeaderBar(Widget):
    DEFAULT_CSS = """
    HeaderBar {
        height: 1;
        width: 1fr;
        background: $panel;
    }
    """

    def __init__(self, *, record_path: str | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.record_path = record_path
        self._snap: ViewSnapshot | None = None
        self._text = Text(" rllmtop ", style="bold reverse")
        self.text = ""  # the plain text last drawn (tests)

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        """Repaint only when the text changes (once a second while running)."""
        self._snap = snap
        out = self._compose_text(snap, self.size.width)
        if out.plain != self.text:
            self._text = out
            self.text = out.plain
            self.refresh()

    def on_resize(self) -> None:
        if self._snap is not None:
            self._text = self._compose_text(self._snap, self.size.width)
            self.text = self._text.plain

    def render(self) -> Text:
        return self._text

    def _compose_text(self, snap: ViewSnapshot, width: int) -> Text:
        left = Text()
        left.append(" rllmtop ", style="bold reverse")
        right = Text()
        info = snap.info
        if info is not None:
            engine = info.engine_kind + (f" {info.engine_version}" if info.engine_version else "")
            left.append(f" {engine}", style="bold")
            profile = dict(info.extra).get("profile")
            if profile:
                left.append(f" ({profile})")
            if info.model:
                left.append(f" · {info.model}")
            left.append(f" · {info.scenario_name or info.mode}")
        state = snap.state
        label = f" {state.value.upper().replace('_', ' ')} "
        right.append(label, style=STATE_STYLES.get(state, "reverse"))
        right.append(f" {format_elapsed(snap.t)} ")
        rec = self.record_path or (info.record_path if info is not None else "")
        if info is not None and info.mode == "replay":
            right.append("▶ replay ", style="bold cyan")
        elif rec:
            right.append("● REC ", style="bold red")
            right.append(_tail(rec, 32) + " ")
        room = width - right.cell_len - 1
        if left.cell_len > room:  # too narrow: keep the state and clock on screen
            left.truncate(max(0, room), overflow="ellipsis")
        pad = max(1, width - left.cell_len - right.cell_len)
        return Text.assemble(left, " " * pad, right, no_wrap=True, overflow="ellipsis")


def _tail(path: str, n: int) -> str:
    return path if len(path) <= n else "…" + path[-(n - 1) :]
