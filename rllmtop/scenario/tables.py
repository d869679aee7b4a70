"""Reading a parsed TOML document safely: the document-wide bounds, and a typed reader for one table.

Every error is a :class:`UserError` whose first line names the file, the field (a dotted path such as
``classes[1].max_tokens``), the value and the problem, and whose hint says what is allowed. Values and keys
in messages are truncated, escaped (a newline in a value never breaks the line) and passed through the one
secret rule.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
import shlex
import tomllib
from collections.abc import Sequence
from typing import Literal, NoReturn

from rllmtop.errors import UserError
from rllmtop.redact import is_secret_name, redact_text
from rllmtop.scenario.limits import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_KEY_CHARS,
    MAX_STRING_CHARS,
    MAX_TEXT_CHARS,
    MAX_VALUES,
)

__all__ = [
    "REQUIRED",
    "Ctx",
    "Raw",
    "Table",
    "display",
    "escape",
    "key_path",
    "parse_document",
    "quantity",
    "show",
]

Raw = dict[str, object]
"""A TOML table as :mod:`tomllib` returns it."""


class _Required(enum.Enum):
    REQUIRED = enum.auto()


REQUIRED: Literal[_Required.REQUIRED] = _Required.REQUIRED
"""Default for a getter whose key must be present."""

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


# ------------------------------------------------------------------------------------ the whole document


def parse_document(ctx: Ctx, text: str) -> Raw:
    """TOML text -> its top-level table, refused in one line when it is larger, deeper or longer than the
    limits (:mod:`rllmtop.scenario.limits`) or names a secret."""
    if len(text) > MAX_FILE_BYTES:
        ctx.error(
            f"{len(text):,} characters, more than a scenario may hold",
            f"allowed: at most {MAX_FILE_BYTES:,} bytes (MAX_FILE_BYTES)",
        )
    _check_dotted_keys(ctx, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{ctx.file}: not valid TOML: {escape(str(e), 200)}",
            "fix the syntax at that line (scenarios/README.md shows the format)",
        ) from e
    except RecursionError as e:
        raise UserError(
            f"{ctx.file}: tables or lists nested too deeply to read",
            f"allowed: at most {MAX_DEPTH} levels of nesting (MAX_DEPTH)",
        ) from e
    check_document(ctx, raw)
    return raw


_DOTS_SCANNED = 256  # a dotted key this long is refused before parsing (the nesting limit refuses 17 parts)


def _scan_value(s: str, i: int, depth: int) -> tuple[int, str | None]:
    """From ``s[i]``, the bracket depth at the end of the line and the multi-line string left open."""
    n = len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            if s.startswith(c * 3, i):
                close = s.find(c * 3, i + 3)
                if close < 0:
                    return depth, c * 3
                i = close + 3
                continue
            i += 1
            while i < n and s[i] != c:
                i += 2 if (s[i] == "\\" and c == '"') else 1
        elif c == "#":
            break
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, None


def _check_dotted_keys(ctx: Ctx, text: str) -> None:
    """Refuse a dotted key of hundreds of parts before :mod:`tomllib` reads it: its time grows with the
    square of the parts (100k parts: minutes). One linear pass; only the key of a top-level
    ``key = value`` line (outside multi-line strings, arrays and inline tables) is counted."""
    in_ml: str | None = None
    depth = 0
    for n, line in enumerate(text.split("\n"), 1):
        if in_ml is not None:
            close = line.find(in_ml)
            if close < 0:
                continue
            depth, in_ml = _scan_value(line, close + 3, depth)
            continue
        if depth > 0:  # inside an array or inline table spanning lines
            depth, in_ml = _scan_value(line, 0, depth)
            continue
        s = line.lstrip()
        if not s or s[0] in "#[":
            continue
        dots, quote, i = 0, "", 0
        while i < len(s):
            c = s[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == ".":
                dots += 1
            elif c == "=":
                break
            i += 1
        if dots >= _DOTS_SCANNED:
            ctx.error(
                f"line {n}: a dotted key of {dots + 1:,} parts",
                f"allowed: at most {MAX_DEPTH} levels of tables and lists (MAX_DEPTH)",
            )
        depth, in_ml = _scan_value(s, i + 1, 0)


def check_document(ctx: Ctx, raw: Raw) -> None:
    """One iterative pass over every value: nesting, sizes, string and key lengths, secret names."""
    count = 0
    stack: list[tuple[object, str, int]] = [(raw, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            ctx.error(
                f"more than {MAX_VALUES:,} values (tables, lists and scalars)",
                f"allowed: at most {MAX_VALUES:,} values in one scenario file (MAX_VALUES)",
            )
        if isinstance(node, str):
            if len(node) > MAX_TEXT_CHARS:
                ctx.fail(
                    path,
                    node,
                    f"{len(node):,} characters",
                    f"a string of at most {MAX_TEXT_CHARS:,} characters (MAX_TEXT_CHARS)",
                )
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            ctx.error(
                f"{path or '(top level)'}: nested more than {MAX_DEPTH} levels deep",
                f"allowed: at most {MAX_DEPTH} levels of tables and lists (MAX_DEPTH)",
            )
        if len(node) > MAX_ITEMS:
            ctx.error(
                f"{path or '(top level)'}: {len(node):,} entries",
                f"allowed: at most {MAX_ITEMS:,} entries in one table or list (MAX_ITEMS)",
            )
        if isinstance(node, list):
            for i, x in enumerate(node):
                stack.append((x, key_path(path, i), depth + 1))
            continue
        for k, x in node.items():
            p = key_path(path, k)
            if len(k) > MAX_KEY_CHARS:
                ctx.error(
                    f"{p}: a key of {len(k):,} characters",
                    f"allowed: keys of at most {MAX_KEY_CHARS} characters (MAX_KEY_CHARS)",
                )
            if is_secret_name(k):
                _secret(ctx, p, k)
            stack.append((x, p, depth + 1))


def _secret(ctx: Ctx, path: str, key: str) -> NoReturn:
    if path.startswith("engine.env."):
        raise UserError(
            f"{ctx.file}: {path}: secrets do not belong in scenario files (they are recorded)",
            f"export {display(key, 60)} in your shell instead: launched engines inherit rllmtop's environment",
        )
    raise UserError(
        f"{ctx.file}: {path}: API keys do not belong in scenario files (they are recorded)",
        "pass --api-key KEY or set OPENAI_API_KEY instead; engine secrets go in your shell's environment",
    )


# ------------------------------------------------------------------------------------------ one table


def quantity(x: float) -> str:
    """A bound or a count for a message: ``604,800``, ``0.001``, ``1e+300``, ``9,223,372,036,854,775,807``."""
    if isinstance(x, int):
        return f"{x:,}"
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:g}"


def _bounds(gt: float | None, ge: float | None, le: float | None) -> str:
    out = []
    if gt is not None:
        out.append(f"> {quantity(gt)}")
    if ge is not None:
        out.append(f">= {quantity(ge)}")
    if le is not None:
        out.append(f"<= {quantity(le)}")
    return " and ".join(out)


class Table:
    """One TOML table being read: typed getters that name the field and what is allowed on error.

    Unknown keys are refused on construction (with a did-you-mean). ``raw`` must be a table, else the
    error says ``what`` it should be.
    """

    def __init__(
        self, ctx: Ctx, raw: object, path: str, allowed: Sequence[str], what: str = "a table"
    ) -> None:
        if not isinstance(raw, dict):
            ctx.fail(
                path or "(top level)", raw, f"must be {what}", f"a TOML table with keys {', '.join(allowed)}"
            )
        self.ctx = ctx
        self.raw: Raw = raw
        self.path = path
        for k in raw:
            if k not in allowed:
                close = difflib.get_close_matches(k, list(allowed), n=1)
                did = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.fail(
                    self.p(k),
                    raw[k],
                    f"unknown key{did}",
                    f"keys of {path or 'the top level'}: {', '.join(allowed)}",
                )

    def p(self, key: str) -> str:
        return key_path(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str) -> object:
        return self.raw.get(key)

    def fail(self, key: str, problem: str, allowed: str) -> NoReturn:
        self.ctx.fail(self.p(key), self.raw.get(key), problem, allowed)

    def _missing(self, key: str, example: str) -> NoReturn:
        self.ctx.missing(self.p(key), example)

    # numbers ------------------------------------------------------------------------------------------

    def _real(
        self, key: str, *, integer: bool, gt: float | None, ge: float | None, le: float | None, inf: bool
    ) -> float | int:
        v = self.raw[key]
        b = _bounds(gt, ge, le)
        allowed = ("an integer" if integer else "a number") + (f" {b}" if b else "")
        if inf:
            allowed += " (or inf)"
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(key, "wrong type", allowed)
        if isinstance(v, float) and math.isnan(v):
            self.fail(key, "not a number", allowed)
        if isinstance(v, float) and math.isinf(v):
            if not (inf and v > 0):
                self.fail(key, "must be finite", allowed)
            return v
        if integer and isinstance(v, float):
            if not v.is_integer():
                self.fail(key, "must be an integer", allowed)
            v = int(v)
        if (
            (gt is not None and not v > gt)
            or (ge is not None and not v >= ge)
            or (le is not None and not v <= le)
        ):
            self.fail(key, "out of range", allowed)
        return v

    def number(
        self,
        key: str,
        default: float | Literal[_Required.REQUIRED],
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        inf: bool = False,
    ) -> float:
        """A finite number (``inf``: +inf allowed too) within the bounds."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f"{key} = <number>")
            return float(default)
        return float(self._real(key, integer=False, gt=gt, ge=ge, le=le, inf=inf))

    def number_opt(
        self,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        inf: bool = False,
    ) -> float | None:
        if key not in self.raw:
            return None
        return self.number(key, REQUIRED, gt=gt, ge=ge, le=le, inf=inf)

    def integer(
        self,
        key: str,
        default: int | Literal[_Required.REQUIRED],
        *,
        ge: int | None = None,
        le: int | None = None,
    ) -> int:
        """An integer (a float with an integral value is taken) within the bounds."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f"{key} = <integer>")
            return default
        v = self._real(key, integer=True, gt=None, ge=ge, le=le, inf=False)
        return int(v)

    def integer_opt(self, key: str, *, ge: int | None = None, le: int | None = None) -> int | None:
        if key not in self.raw:
            return None
        return self.integer(key, REQUIRED, ge=ge, le=le)

    # strings ------------------------------------------------------------------------------------------

    def string(
        self,
        key: str,
        default: str | Literal[_Required.REQUIRED],
        *,
        choices: Sequence[str] | None = None,
        nonempty: bool = True,
        max_len: int = MAX_STRING_CHARS,
    ) -> str:
        """A string of at most ``max_len`` characters; with ``choices``, one of them."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f'{key} = "..."' + (f" (one of {', '.join(choices)})" if choices else ""))
            return default
        v = self.raw[key]
        allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
        if not isinstance(v, str):
            self.fail(key, "must be a string", allowed)
        if choices is not None:
            if v not in choices:
                close = difflib.get_close_matches(v[:64], list(choices), n=1) if len(v) <= 64 else []
                self.fail(key, f"unknown value{f' (did you mean {close[0]!r}?)' if close else ''}", allowed)
            return v
        if len(v) > max_len:
            self.fail(key, f"{len(v):,} characters", f"a string of at most {max_len:,} characters")
        if nonempty and not v.strip():
            self.fail(key, "must not be empty", allowed)
        return v

    def string_opt(
        self,
        key: str,
        *,
        choices: Sequence[str] | None = None,
        nonempty: bool = True,
        max_len: int = MAX_STRING_CHARS,
    ) -> str | None:
        if key not in self.raw:
            return None
        return self.string(key, REQUIRED, choices=choices, nonempty=nonempty, max_len=max_len)

    def line(self, key: str, default: str | None, *, max_len: int = MAX_STRING_CHARS) -> str | None:
        """A string on one line with no control characters (URLs, names, addresses)."""
        v = self.string_opt(key, max_len=max_len)
        if v is None:
            return default
        if not v.isprintable():
            self.fail(key, "contains control characters", "one line of printable text")
        return v

    # others -------------------------------------------------------------------------------------------

    def flag(self, key: str, default: bool) -> bool:
        v = self.flag_opt(key)
        return default if v is None else v

    def flag_opt(self, key: str) -> bool | None:
        if key not in self.raw:
            return None
        v = self.raw[key]
        if not isinstance(v, bool):
            self.fail(key, "must be true or false", "true, false")
        return v

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings (a single string is split like a shell command line)."""
        if key not in self.raw:
            return ()
        v = self.raw[key]
        if isinstance(v, str):
            if len(v) > MAX_STRING_CHARS:
                self.fail(key, f"{len(v):,} characters", f"at most {MAX_STRING_CHARS:,} characters")
            try:
                return tuple(shlex.split(v))
            except ValueError as e:
                self.fail(key, f"cannot split: {e}", "a list of strings")
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(key, "must be a list of strings", 'a list of strings, e.g. ["--flag", "value"]')
        for i, x in enumerate(v):
            if len(x) > MAX_STRING_CHARS:
                self.ctx.fail(
                    key_path(self.p(key), i), x, f"{len(x):,} characters", f"at most {MAX_STRING_CHARS:,}"
                )
        return tuple(str(x) for x in v)

    def str_map(self, key: str) -> dict[str, str]:
        """A table of strings (numbers are converted)."""
        if key not in self.raw:
            return {}
        v = self.raw[key]
        if not isinstance(v, dict):
            self.fail(key, "must be a table", "a table of string values")
        out: dict[str, str] = {}
        for k, x in v.items():
            p = key_path(self.p(key), k)
            if isinstance(x, bool) or not isinstance(x, str | int | float):
                self.ctx.fail(p, x, "must be a string", "a string (numbers are converted)")
            if isinstance(x, str) and len(x) > MAX_STRING_CHARS:
                self.ctx.fail(p, x, f"{len(x):,} characters", f"at most {MAX_STRING_CHARS:,} characters")
            out[k] = str(x)
        return out

    def table(self, key: str, allowed: Sequence[str], what: str = "a table") -> Table | None:
        """The sub-table ``key``, or None when absent."""
        if key not in self.raw:
            return None
        return Table(self.ctx, self.raw[key], self.p(key), allowed, what)

    def table_list(
        self, key: str, allowed: Sequence[str], *, max_items: int, example: str, required: bool = False
    ) -> list[Table]:
        """An array of tables (``[[key]]``), at most ``max_items``; empty when absent (unless required)."""
        if key not in self.raw:
            if required:
                self._missing(key, example)
            return []
        v = self.raw[key]
        if not isinstance(v, list) or (required and not v):
            self.fail(
                key, "must be a non-empty list of tables" if required else "must be a list of tables", example
            )
        if len(v) > max_items:
            self.fail(key, f"{len(v):,} entries", f"at most {max_items:,}")
        return [Table(self.ctx, x, key_path(self.p(key), i), allowed) for i, x in enumerate(v)]
