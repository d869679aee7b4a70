"""Stragglers: requests the rule flags, each with its reason, under the rule's own text.

Drawn line by line from strips rebuilt at most once per snapshot (while on screen), only for the lines that
fit; a refresh repaints only the lines that changed. Ages of requests still in flight are whole seconds
past 10 s, so a long straggler's line changes once a second, not at every refresh."""

from __future__ import annotations

import textwrap

from rich.segment import Segment
from textual.geometry import Region
from textual.strip import Strip

from rllmtop.tui.widgets.board import ReasonCache
from rllmtop.tui.widgets.styles import BOLD, DIM, RED, CachedStyle
from rllmtop.view import Straggler, ViewSnapshot

__all__ = ["StragglerList"]


class StragglerList(CachedStyle):
    DEFAULT_CSS = """
    StragglerList {
        height: 1fr;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._snap: ViewSnapshot | None = None
        self._key: object = None
        self._strips: list[Strip] = []
        self.lines: list[str] = []  # plain text of what is drawn (tests)
        self._rule_key: object = None
        self._reasons = ReasonCache()
        self._rule_lines: list[str] = []

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        self._snap = snap
        width, height = self.size
        if not width or not height or not self.region:  # hidden: rebuilt when drawn
            self.refresh()
            return
        old = self._strips
        self._key = (id(snap), width, height)
        self._strips = self._build(snap, width, height)
        if len(old) != len(self._strips):
            self.refresh()
            return
        for y, (a, b) in enumerate(zip(old, self._strips, strict=True)):
            if a != b:
                self.refresh(Region(0, y, width, 1))

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        snap = self._snap
        if snap is not None:
            key = (id(snap), width, height)
            if key != self._key:
                self._key = key
                self._strips = self._build(snap, width, height)
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.base_style)

    def _wrapped(self, rule: str, width: int) -> list[str]:
        key = (rule, width)
        if self._rule_key != key:
            self._rule_key = key
            self._rule_lines = textwrap.wrap("rule: " + rule, max(10, width)) or [""]
        return self._rule_lines

    def _build(self, snap: ViewSnapshot, width: int, height: int) -> list[Strip]:
        base = self.base_style
        dim = base + DIM
        bold = base + BOLD
        red = base + RED
        out: list[list[Segment]] = []
        rule = self._wrapped(snap.straggler_rule, width)
        for i, part in enumerate(rule):
            out.append([Segment("rule: ", bold), Segment(part[6:], dim)] if i == 0 else [Segment(part, dim)])
        strag = snap.stragglers
        if not strag:
            waiting = "none so far" if snap.asu is not None else "waiting for requests to finish"
            out.append([Segment(waiting, dim)])
        else:
            room = max(1, height - len(out))
            n_live = sum(1 for s in strag if not s.finished)
            shown: tuple[Straggler, ...] = strag[: room - 1] if len(strag) > room else strag
            self._reasons.prune()
            for s in shown:
                mark = Segment("● ", red) if not s.finished else Segment("✓ ", dim)
                age = f"{s.age:.0f}s" if not s.finished and s.age >= 10 else f"{s.age:.1f}s"
                desc = f"{s.cls} {s.phase.value} {age} {s.reasoning} tok "
                out.append(
                    [
                        mark,
                        Segment(f"#{s.rid} ", bold),
                        Segment(desc, base),
                        Segment(
                            self._reasons.get(s.rid, age, s.reason) or "", red if not s.finished else base
                        ),
                    ]
                )
            if len(shown) < len(strag):
                more = len(strag) - len(shown)
                out.append(
                    [Segment(f"… {more} more ({n_live} in flight, {len(strag) - n_live} finished)", dim)]
                )
        self.lines = ["".join(seg.text for seg in segs) for segs in out]
        return [Strip(segs).crop_extend(0, width, base) for segs in out[:height]]
