"""What a scenario error looks like: the file, the field's dotted path, the value, the problem, and a hint.

Values, keys and paths in messages are shortened, escaped (a newline in a value never breaks the line) and
passed through the one secret rule (:mod:`rllmtop.redact`).
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

from rllmtop.errors import UserError
from rllmtop.redact import redact_text

__all__ = ["Ctx", "display", "escape", "key_path", "quantity", "show"]

# ----------------------------------------------------------------------------------------------- display

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str, limit: int = 80) -> str:
    """``text`` on one line: at most ``limit`` characters (then ``...``), backslash escapes for quotes,
    backslashes and every unprintable character (newlines, U+2028, bidi overrides, ...)."""
    cut = len(text) > limit
    out: list[str] = []
    for ch in text[: limit + 1]:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    s = "".join(out)
    if cut or len(s) > limit:
        s = s[: max(limit - 3, 0)] + "..."
    return s


def display(text: str, limit: int = 80) -> str:
    """User-given text (a path, a key, a name) for a message: one line, shortened, secrets hidden."""
    return redact_text(escape(text, limit))


def _show(v: object, depth: int, budget: int) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + escape(v, max(budget, 8)) + '"'
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        s = str(v) if abs(v) < 10**40 else f"{v:.3e}"
        return s
    if isinstance(v, dict | list):
        if depth >= 3:
            return "{...}" if isinstance(v, dict) else "[...]"
        parts: list[str] = []
        used = 0
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in items:
            if used > budget:
                parts.append("...")
                break
            part = _show(x, depth + 1, budget - used)
            if isinstance(v, dict):
                part = f"{_key(str(k))} = {part}"
            parts.append(part)
            used += len(part) + 2
        return ("{" + ", ".join(parts) + "}") if isinstance(v, dict) else ("[" + ", ".join(parts) + "]")
    return escape(repr(v), budget)


def show(v: object, limit: int = 80) -> str:
    """A value as a TOML-like literal on one line, at most ``limit`` characters, secrets hidden."""
    s = _show(v, 0, limit)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return redact_text(s)


def _key(k: str) -> str:
    return redact_text(k) if _BARE_KEY.fullmatch(k) else '"' + display(k, 40) + '"'


def key_path(prefix: str, key: str | int) -> str:
    """The dotted path of ``key`` inside ``prefix``: ``engine.env.X``, ``classes[1]``, ``a."odd key"``."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    k = _key(key)
    return f"{prefix}.{k}" if prefix else k


# ----------------------------------------------------------------------------------------- error context


class Ctx:
    """Where errors point: the file, and which fields came from the command line or a matrix cell."""

    def __init__(self, file: str) -> None:
        self.file = display(file, 200) if len(file) <= 200 else "..." + display(file[-197:], 197)
        self.origin: dict[str, str] = {}

    def fail(self, path: str, value: object, problem: str, allowed: str) -> NoReturn:
        src = self.origin.get(path)
        if src is not None:
            what = f"{src} {show(value)}: {problem} (sets {path} of {self.file})"
        else:
            what = f"{self.file}: {path} = {show(value)}: {problem}"
        raise UserError(what, f"allowed: {allowed}")

    def missing(self, path: str, allowed: str) -> NoReturn:
        raise UserError(f"{self.file}: {path} is missing", f"add it: {allowed}")

    def error(self, what: str, hint: str) -> NoReturn:
        """A problem of the scenario as a whole (``what`` names the fields involved)."""
        raise UserError(f"{self.file}: {what}", hint)

    def named(self, path: str, value: object) -> str:
        """``path = value``, or ``--flag value`` when the command line set it."""
        src = self.origin.get(path)
        return f"{src} {show(value, 40)}" if src is not None else f"{path} = {show(value, 40)}"


def quantity(x: float) -> str:
    """A bound or a count for a message: ``604,800``, ``0.001``, ``1e+300``, ``9,223,372,036,854,775,807``."""
    if isinstance(x, int):
        return f"{x:,}"
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:g}"
