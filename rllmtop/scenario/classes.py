"""The ``[[classes]]`` tables: what requests ask, and where each class's prompts come from."""

from __future__ import annotations

import math
import re
import string
from pathlib import Path

from rllmtop.scenario.limits import (
    MAX_BUILTIN_ITEMS,
    MAX_CLASSES,
    MAX_NAME_CHARS,
    MAX_REQUESTS,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    MAX_TURNS,
    MAX_WAIT_SECONDS,
    MAX_WEIGHT,
)
from rllmtop.scenario.messages import Ctx, display, key_path
from rllmtop.scenario.schema import (
    ANSWER_FORMATS,
    BUILTIN_PROMPT_SETS,
    DATASET_FORMATS,
    DIFFICULTIES,
    REASONING_EFFORTS,
    ConversationSpec,
    PromptSource,
    RequestClass,
)
from rllmtop.scenario.tables import Table

__all__ = ["CLASS_TABLE_KEYS", "NAME_RE", "build_classes"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
"""A usable scenario or class name (it names recordings): letters, digits and ``. _ + -``."""

CLASS_TABLE_KEYS = (
    "name",
    "prompts",
    "weight",
    "max_tokens",
    "temperature",
    "top_p",
    "thinking",
    "system",
    "difficulty",
    "reasoning_effort",
    "reasoning_budget",
    "chat_template_kwargs",
    "conversation",
)
_PROMPT_KEYS = (
    "builtin",
    "file",
    "format",
    "question",
    "answer",
    "answer_format",
    "choices",
    "id",
    "difficulty",
    "template",
    "limit",
    "distractors",
)
_CONVERSATION_KEYS = ("turns", "turns_max", "think_time")
_EXTENSIONS = {
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "json",
    "csv": "csv",
    "parquet": "parquet",
    "pq": "parquet",
}
_TEMPLATE_HINT = "text with {question} (and {choices}); double braces {{ }} for literal ones"


def usable_name(t: Table, key: str, default: str) -> str:
    name = t.string(key, default, max_len=MAX_NAME_CHARS)
    if not NAME_RE.fullmatch(name):
        t.fail(key, "not a usable name", f"letters, digits and . _ + - (at most {MAX_NAME_CHARS} characters)")
    return name


def build_classes(ctx: Ctx, top: Table, base: Path) -> tuple[RequestClass, ...]:
    example = '[[classes]] name = "easy", prompts = "math-easy"'
    tables = top.table_list(
        "classes", CLASS_TABLE_KEYS, max_items=MAX_CLASSES, example=example, required=True
    )
    out: list[RequestClass] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(tables):
        if not t.has("prompts"):
            ctx.missing(
                t.p("prompts"),
                f'prompts = "math-easy" (one of {", ".join(BUILTIN_PROMPT_SETS)}) '
                'or prompts = {file = "data.jsonl", question = "...", answer = "..."}',
            )
        src = _prompts(ctx, t.get("prompts"), t.p("prompts"), base)
        default_name = (src.builtin or Path(src.file or f"class{i}").stem)[:MAX_NAME_CHARS]
        name = usable_name(t, "name", default_name if NAME_RE.fullmatch(default_name) else f"class{i}")
        if name in seen:
            t.fail("name", f"duplicate: classes[{seen[name]}] has the same name", "a unique name per class")
        seen[name] = i
        thinking = t.flag("thinking", True)
        effort = t.string_opt("reasoning_effort", choices=REASONING_EFFORTS)
        budget = t.integer_opt("reasoning_budget", ge=0, le=MAX_TOKENS)
        if not thinking:
            for k in ("reasoning_effort", "reasoning_budget"):
                if t.has(k):
                    t.fail(k, "a reasoning control, but thinking = false", "remove it, or thinking = true")
        out.append(
            RequestClass(
                name=name,
                prompts=src,
                weight=t.number("weight", 1.0, ge=0, le=MAX_WEIGHT),
                max_tokens=t.integer("max_tokens", 4096, ge=1, le=MAX_TOKENS),
                temperature=t.number("temperature", 0.6, ge=0, le=2),
                top_p=t.number_opt("top_p", gt=0, le=1),
                thinking=thinking,
                system=t.string_opt("system", nonempty=False, max_len=MAX_TEXT_CHARS),
                difficulty=t.string_opt("difficulty", choices=DIFFICULTIES),
                reasoning_effort=effort,
                reasoning_budget=budget,
                chat_template_kwargs=_template_kwargs(t),
                conversation=_conversation(t),
            )
        )
    if sum(c.weight for c in out) <= 0:
        ctx.fail("classes[0].weight", out[0].weight, "every class has weight 0", "at least one weight > 0")
    return tuple(out)


def _conversation(t: Table) -> ConversationSpec | None:
    c = t.table("conversation", _CONVERSATION_KEYS, what="a table: turns = N, think_time = S")
    if c is None:
        return None
    turns = c.integer("turns", 1, ge=1, le=MAX_TURNS)
    turns_max = c.integer_opt("turns_max", ge=turns, le=MAX_TURNS)
    return ConversationSpec(
        turns=turns, turns_max=turns_max, think_time=c.number("think_time", 0.0, ge=0, le=MAX_WAIT_SECONDS)
    )


def _template_kwargs(t: Table) -> dict[str, object]:
    """Passed through to the chat template; JSON values only, ``enable_thinking`` belongs to ``thinking``."""
    if not t.has("chat_template_kwargs"):
        return {}
    v = t.get("chat_template_kwargs")
    if not isinstance(v, dict):
        t.fail("chat_template_kwargs", "must be a table", "a table, e.g. { thinking_budget = 1024 }")
    if "enable_thinking" in v:
        t.ctx.fail(
            key_path(t.p("chat_template_kwargs"), "enable_thinking"),
            v["enable_thinking"],
            "set by the class's thinking flag",
            "thinking = true / false (sent as enable_thinking)",
        )
    stack: list[tuple[object, str]] = [(v, t.p("chat_template_kwargs"))]
    while stack:
        x, path = stack.pop()
        if isinstance(x, dict):
            stack.extend((y, key_path(path, k)) for k, y in x.items())
        elif isinstance(x, list):
            stack.extend((y, key_path(path, i)) for i, y in enumerate(x))
        elif isinstance(x, float) and not math.isfinite(x):
            t.ctx.fail(
                path, x, "must be finite", "JSON values: strings, finite numbers, booleans, lists, tables"
            )
        elif not isinstance(x, str | int | float | bool):
            t.ctx.fail(
                path, x, "not a JSON value", "JSON values: strings, finite numbers, booleans, lists, tables"
            )
    return dict(v)


def _prompts(ctx: Ctx, raw: object, path: str, base: Path) -> PromptSource:
    if isinstance(raw, str):
        if raw not in BUILTIN_PROMPT_SETS:
            ctx.fail(
                path,
                raw,
                "unknown built-in prompt set",
                f'one of {", ".join(BUILTIN_PROMPT_SETS)}, or a table with file = "data.jsonl"',
            )
        return PromptSource(builtin=raw)
    t = Table(ctx, raw, path, _PROMPT_KEYS, what="a built-in set name or a table")
    builtin = t.string_opt("builtin", choices=BUILTIN_PROMPT_SETS)
    file = t.line("file", None)
    if (builtin is None) == (file is None):
        ctx.fail(
            path,
            raw,
            "needs exactly one of builtin or file",
            f'builtin = "{BUILTIN_PROMPT_SETS[0]}" or file = "data.jsonl"',
        )
    if builtin is not None:
        limit = t.integer_opt("limit", ge=1, le=MAX_BUILTIN_ITEMS)
        for k in _PROMPT_KEYS:
            if k not in ("builtin", "limit") and t.has(k):
                t.fail(k, "only applies to file datasets", "built-in sets take: builtin, limit")
        return PromptSource(builtin=builtin, limit=limit)
    assert file is not None
    fp = Path(file)
    try:
        fp = fp.expanduser()
        fp = fp if fp.is_absolute() else base / fp
        ok = fp.is_file()
    except (OSError, ValueError, RuntimeError):
        ok = False
    if not ok:
        t.fail(
            "file",
            f"no such file ({display(str(fp), 160)})",
            "a JSONL, JSON, CSV or Parquet file, relative to the scenario file",
        )
    fmt = t.string_opt("format", choices=DATASET_FORMATS)
    if fmt is None:
        fmt = _EXTENSIONS.get(fp.suffix.lower().lstrip("."))
        if fmt is None:
            t.fail(
                "file",
                f"cannot tell the format from the extension '{display(fp.suffix, 20)}'",
                f"format = one of {', '.join(DATASET_FORMATS)}",
            )
    template = t.string_opt("template", max_len=MAX_TEXT_CHARS)
    if template is not None:
        _check_template(t, template)
    distractors = t.strings("distractors")
    choices = t.line("choices", None)
    if distractors and choices:
        t.fail(
            "distractors",
            "use either choices (a list column) or distractors (wrong-option columns)",
            "one of them",
        )
    answer_format = t.string(
        "answer_format", "choice" if (distractors or choices) else "plain", choices=ANSWER_FORMATS
    )
    answer = t.string("answer", "answer", nonempty=False)
    return PromptSource(
        file=str(fp.resolve()),
        format=fmt,
        question=t.string("question", "question"),
        answer=answer or None,
        answer_format=answer_format,
        choices=choices,
        id=t.line("id", None),
        difficulty=t.line("difficulty", None),
        template=template,
        limit=t.integer_opt("limit", ge=1, le=MAX_REQUESTS),
        distractors=distractors,
    )


def _check_template(t: Table, template: str) -> None:
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        t.fail("template", f"not a format string: {e}", _TEMPLATE_HINT)
    names = {f for f, _, _ in parsed}
    if "question" not in names or not names <= {"question", "choices"}:
        t.fail("template", "must use {question} and nothing but {question}, {choices}", _TEMPLATE_HINT)
    if any(spec for _, spec, _ in parsed):
        t.fail("template", "a format spec ({question:...}) does not apply to text", _TEMPLATE_HINT)
    if any(conv not in (None, "s", "r", "a") for _, _, conv in parsed):
        t.fail("template", "unknown conversion (only !s, !r, !a exist)", _TEMPLATE_HINT)
