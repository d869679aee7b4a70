"""The one-line header: engine (or fleet), model, scenario with its matrix cell and overrides, warnings,
state, the clock the figures are on, elapsed time, recording."""

from __future__ import annotations

import json

from rich.text import Text
from textual.widget import Widget

from rllmtop.events import Provenance, SessionState
from rllmtop.view import ViewSnapshot, clock_note, format_elapsed

__all__ = ["STATE_STYLES", "HeaderBar", "provenance_text"]

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


def provenance_text(prov: Provenance | None, scenario_name: str = "") -> str:
    """The matrix cell (unless the scenario name already carries it) and the overrides as the flags that
    made them: ``[profile=rllm-7b] --request-rate 4.0 --num-prompts 12``."""
    if prov is None:
        return ""
    parts = []
    if prov.cell_label and f"[{prov.cell_label}]" not in scenario_name:
        parts.append(f"[{prov.cell_label}]")
    flags = dict(prov.override_flags)
    for key, value in prov.overrides:
        try:
            v = json.loads(value)
        except ValueError:
            v = value
        shown = v if isinstance(v, str) else value
        parts.append(f"{flags.get(key, key)} {shown}".rstrip())
    return " ".join(parts)


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
        self._key: object = None

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        """Repaint only when the text changes (once a second while running)."""
        self._snap = snap
        width = self.size.width
        key = (id(snap.info), snap.state, int(snap.t), len(snap.engines), snap.alerts, width)
        if key == self._key:  # nothing it shows moved
            return
        self._key = key
        out = self._compose_text(snap, width)
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
        info = snap.info
        if info is not None:
            n = len(snap.engines)
            if n >= 2:
                left.append(f" fleet of {n} ({info.engine_kind})", style="bold")
            else:
                engine = info.engine_kind + (f" {info.engine_version}" if info.engine_version else "")
                left.append(f" {engine}", style="bold")
                profile = dict(info.extra).get("profile")
                if profile:
                    left.append(f" ({profile})")
            if info.model:
                left.append(f" · {info.model}")
            left.append(f" · {info.scenario_name or info.mode}")
            prov = provenance_text(info.provenance, info.scenario_name)
            if prov:
                left.append(f" {prov}", style="italic")
        # the right side, from the fullest wording to the tightest: the first that leaves the left whole,
        # else the tightest that keeps the warnings' words and leaves the left 24 cells (then "⚠" alone)
        rights = self._rights(snap)
        right = next((r for r in rights[:3] if left.cell_len + r.cell_len + 1 <= width), None)
        if right is None:
            right = rights[2] if rights[2].cell_len + 24 <= width else rights[3]
        room = width - right.cell_len - 1
        if left.cell_len > room:  # too narrow: keep the warnings, the state and the clock on screen
            left.truncate(max(0, room), overflow="ellipsis")
        pad = max(1, width - left.cell_len - right.cell_len)
        return Text.assemble(left, " " * pad, right, no_wrap=True, overflow="ellipsis")

    def _rights(self, snap: ViewSnapshot) -> list[Text]:
        info = snap.info
        state = snap.state
        clock = clock_note(info)
        rec = self.record_path or (info.record_path if info is not None else "")
        replay = info is not None and info.mode == "replay"
        out = []
        for level in range(4):
            right = Text()
            for a in snap.alerts:
                right.append(f"⚠ {a.short} " if level < 3 else "⚠ ", style="bold red")
            right.append(
                f" {state.value.upper().replace('_', ' ')} ", style=STATE_STYLES.get(state, "reverse")
            )
            if clock:
                right.append(f" {clock}" if level < 2 else f" sim x{info.speed:g}", style="bold yellow")  # type: ignore[union-attr]
            right.append(f" {format_elapsed(snap.t)} ")
            if replay:
                right.append("▶ replay ", style="bold cyan")
            elif rec:
                right.append("● REC ", style="bold red")
                if level == 0:
                    right.append(_tail(rec, 32) + " ")
            out.append(right)
        return out


def _tail(path: str, n: int) -> str:
    return path if len(path) <= n else "…" + path[-(n - 1) :]
