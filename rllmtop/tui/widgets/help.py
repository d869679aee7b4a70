"""The ``?`` help screen: every key and what each panel shows."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpScreen"]

PANELS = (
    (
        "header",
        "engine (or fleet), model, scenario with its matrix cell and overrides; ⚠ warnings; state; the clock "
        'every figure is on ("simulated clock (xK)" in a time-lapse run of the simulator, else wall '
        "time); elapsed time; recording",
    ),
    (
        "KV cache",
        "engine KV-cache usage (0-100%), the dotted line is 100%; ▼ marks preemptions, counted in the window "
        "and over the run",
    ),
    ("queue", "requests the engine is running vs queueing (from its /metrics)"),
    (
        "tok/s",
        "client-side output tokens/s: reasoning (magenta) under answer (green); the engine's own rate grey",
    ),
    ("req/s", "requests sent vs finished per second; failures in red"),
    (
        "fleet",
        "two or more engines (engines discovered mid-run join): one row per engine (health up / stale / "
        "restarted / down, KV %, running, waiting, tok/s, preemptions this session, GPU utilisation, memory "
        "and power where served, version) and the spread across engines. The engine charts show the fleet: "
        "KV is the mean over the engines with a current reading, weighted by each engine's KV capacity when "
        "every engine serves it (the legend says capacity-weighted), else each weighs the same; queues and "
        "rates are summed; e shows one engine's own series instead",
    ),
    (
        "requests",
        "in flight (and just ended): phase, age, reasoning and answer tokens, TTFT, TTFVT; the sender "
        "worker (worker@node) once more than one sent requests",
    ),
    ("stragglers", "requests the stated rule flags, with the reason; ● in flight, ✓ finished"),
    (
        "ASU",
        "Accuracy (and cut: ok requests stopped at max_tokens), Service (tok/s), User (TTFVT, E2E "
        "p50/p90/p99), good (ok requests meeting the scenario's goodput SLOs, when it has some) and error "
        "rate per class, over requests that ended (past 10,000 the percentiles cover the most recent 10,000, "
        "the counts stay exact: the note says so); client send-lag p99 turns red when the client itself is "
        "late (the load is not what was asked); the client's event-loop lateness; warnings in words when "
        "the client was late, the simulator fell behind, a sender worker died or a worker's clock is off",
    ),
    ("reasoning length", "distribution of finished requests' reasoning tokens per class/difficulty"),
    (
        "timeline (t)",
        "one row per request on the charts' clock and window, coloured by phase (queued, waiting for a first "
        "token, thinking, answering, done, ✗ failed); ╳ marks a long stall of its stream, a likely "
        "preemption; above the rows the engine's KV usage with ▼ where preemptions were counted; beside them "
        "who holds the cache: the requests in flight with the most KV tokens now, at the last KV peak and at "
        "the last burst of preemptions",
    ),
    ("logs", "events (errors and warnings) and the engine's own log when rllmtop launched it"),
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 90%;
        max-width: 110;
        height: 90%;
        border: round $accent;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss_help", "close", show=True),
    ]

    def __init__(self, keys: list[tuple[str, str]], rule: str) -> None:
        super().__init__()
        self.keys = keys
        self.rule = rule

    def compose(self) -> ComposeResult:
        keys = Table(box=None, show_header=False, padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for k, what in self.keys:
            keys.add_row(k, what)
        panels = Table(box=None, show_header=False, padding=(0, 2))
        panels.add_column(style="bold", no_wrap=True)
        panels.add_column()
        for name, what in PANELS:
            panels.add_row(name, what)
        with VerticalScroll():
            yield Static(Text("rllmtop: top for reasoning-LLM serving", style="bold"))
            yield Static(Text("\nKeys", style="bold underline"))
            yield Static(keys)
            yield Static(Text("\nPanels", style="bold underline"))
            yield Static(panels)
            yield Static(Text.assemble(("\nStraggler rule: ", "bold"), self.rule))
            yield Static(Text("\nesc / ? / q closes this help", style="dim"))

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
