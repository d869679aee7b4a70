"""Helpers for the scenario tests: write a file, load it, or get the one-line error it must give."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import Scenario, load_scenario

MINIMAL = '[load]\nnum_prompts = 10\n\n[[classes]]\nprompts = "math-easy"\n'

Loader = Callable[..., Scenario]
Failer = Callable[..., UserError]


def one_line_error(e: UserError, file: str) -> None:
    """What a user sees: the first line names the file, a hint says what to do, neither breaks lines."""
    assert "\n" not in e.what and "\r" not in e.what, e.what
    assert e.hint and "\n" not in e.hint, e.hint
    assert file in e.what or e.what.startswith("--") or e.what.startswith("[matrix]"), e.what


@pytest.fixture
def load(tmp_path: Path) -> Loader:
    def run(text: str, overrides: dict[str, object] | None = None, name: str = "s.toml") -> Scenario:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return load_scenario(str(p), overrides)

    return run


@pytest.fixture
def fail(tmp_path: Path) -> Failer:
    def run(text: str, overrides: dict[str, object] | None = None, name: str = "s.toml") -> UserError:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        with pytest.raises(UserError) as ei:
            load_scenario(str(p), overrides)
        one_line_error(ei.value, name)
        return ei.value

    return run
