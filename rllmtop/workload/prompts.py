"""Prompt sets: built-in generated problems with reference answers, local datasets, and the class mix.

Built-in sets are generated (nothing is downloaded). Every item's arithmetic core is ONE expression between
``$`` delimiters over non-negative integers with ``+ - *``, ``^`` (power) and ``mod`` (remainder), fully
parenthesised, with every intermediate value a non-negative integer (so no engine or grader can disagree on
precedence or on the sign of a remainder). The number of binary operators sets the tier, as the simulator
infers it: 1-3 ``math-easy`` (GSM8K-like), 4-6 ``math-medium`` (MATH-500-like), 7-10 ``math-hard``
(AIME-like). ``mcq`` (GPQA-like) adds four option lines ``(A) <int>`` .. ``(D) <int>``, one of them the value;
its reference is the letter. The reference answer is never sent to an engine.
"""

from __future__ import annotations

import csv
import functools
import string
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from rllmtop.errors import UserError
from rllmtop.scenario import BUILTIN_PROMPT_SETS, PromptSource, RequestClass, Scenario

__all__ = [
    "DEFAULT_SET_SIZE",
    "MixDraws",
    "PromptItem",
    "PromptMix",
    "count_operators",
    "generate_set",
    "load_prompt_source",
    "load_scenario_prompts",
]

DEFAULT_SET_SIZE = 500
"""Items generated per built-in set unless the class's ``prompts.limit`` says otherwise."""


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One prompt and what grading needs to score the answer."""

    id: str  # stable within its set, e.g. "math-easy-0042"
    text: str  # the user message
    reference: str | None  # reference answer (never sent); None = not graded
    kind: str  # grading kind: "number" | "choice" | "text" | "" (not graded)
    difficulty: str = ""


# ============================================================================ generated arithmetic problems

_BOUND = 1_000_000
_TIERS = {  # name -> (operator count range, leaf range, operator weights + - * ^ mod)
    "math-easy": ((1, 3), (2, 99), (4, 3, 3, 0, 0)),
    "math-medium": ((4, 6), (2, 60), (4, 3, 3, 1, 1.5)),
    "math-hard": ((7, 10), (2, 40), (4, 3, 3, 1, 2)),
    "mcq": ((2, 5), (2, 60), (4, 3, 3, 1, 1)),
}
_DIFFICULTY = {"math-easy": "easy", "math-medium": "medium", "math-hard": "hard", "mcq": "mcq"}
_OPS = ("+", "-", "*", "^", "mod")


@dataclass(frozen=True, slots=True)
class _Node:
    value: int
    text: str
    leaf: bool


def _combine(a: _Node, b: _Node, rng: np.random.Generator, weights: Sequence[float]) -> _Node:
    ok = []
    for op, w in zip(_OPS, weights, strict=True):
        if w <= 0:
            continue
        if op == "+" and a.value + b.value <= _BOUND:
            ok.append((op, w, a.value + b.value))
        elif op == "-" and a.value >= b.value:
            ok.append((op, w, a.value - b.value))
        elif op == "*" and a.value * b.value <= _BOUND:
            ok.append((op, w, a.value * b.value))
        elif op == "^" and b.leaf and 2 <= b.value <= 3 and a.value <= 30 and a.value**b.value <= _BOUND:
            ok.append((op, w, a.value**b.value))
        elif op == "mod" and b.value >= 2:
            ok.append((op, w, a.value % b.value))
    if not ok:  # both large: a - b or b - a always works after swapping
        a, b = (a, b) if a.value >= b.value else (b, a)
        ok.append(("-", 1.0, a.value - b.value))
    p = np.array([w for _, w, _ in ok], dtype=float)
    op, _, v = ok[int(rng.choice(len(ok), p=p / p.sum()))]
    lt = a.text if a.leaf else f"({a.text})"
    rt = b.text if b.leaf else f"({b.text})"
    sep = " " if op in ("+", "-", "mod") else ""
    return _Node(v, f"{lt}{sep}{op}{sep}{rt}", False)


def _leaf(v: int) -> _Node:
    return _Node(v, str(v), True)


def _expression(k: int, leaves: tuple[int, int], weights: Sequence[float], rng: np.random.Generator) -> _Node:
    """A random expression with exactly ``k`` binary operators."""
    if k == 0:
        return _leaf(int(rng.integers(leaves[0], leaves[1] + 1)))
    left = int(rng.integers(0, k))
    a = _expression(left, leaves, weights, rng)
    right = k - 1 - left
    if right == 0 and weights[3] > 0 and a.value <= 30 and rng.random() < 0.4:
        b = _leaf(int(rng.integers(2, 4)))  # a power's exponent: 2 or 3
    else:
        b = _expression(right, leaves, weights, rng)
    return _combine(a, b, rng, weights)


def count_operators(expr: str) -> int:
    """Number of binary operators in a generated expression (the tier rule)."""
    return sum(expr.count(c) for c in "+-*^") + expr.count("mod")


_EASY = (
    "{who} keeps a tally of {things} at the {place}. At closing time the count is $EXPR$. "
    "How many {things} are there?",
    "A {place} receives shipments of {things} all week. The number left on Friday is $EXPR$. "
    "How many {things} are left?",
    "{who} plans a {event} and works out the number of {things} needed as $EXPR$. How many {things} is that?",
)
_MEDIUM = (
    "In an algebra exercise, {who} has to evaluate $EXPR$ by hand. What integer does it equal?",
    "A number puzzle at the {place}: the answer is the value of $EXPR$. Find it.",
    "Simplify $EXPR$ to a single integer.",
)
_HARD = (
    "Let N be the value of $EXPR$. Find N.",
    "A contest problem asks for the exact value of $EXPR$. Compute it.",
    "Evaluate $EXPR$, where a mod b is the remainder of a divided by b.",
)
_MCQ = (
    "A quiz question in {field} reduces to evaluating $EXPR$. Which option is correct?",
    "In a {field} exam, the quantity asked for equals $EXPR$. Which value is it?",
)
_WHO = ("Mia", "Omar", "Lena", "Ravi", "Sofia", "Tom", "Aiko", "Jonas", "Nadia", "Pablo")
_THINGS = ("crates", "apples", "books", "marbles", "tickets", "bottles", "stamps", "bricks", "cookies")
_PLACES = ("warehouse", "library", "market", "bakery", "school", "museum", "harbor", "farm")
_EVENTS = ("picnic", "fair", "party", "tournament", "concert", "workshop")
_FIELDS = ("chemistry", "physics", "biology", "astronomy", "geology", "genetics")
_MATH_INSTRUCTION = "Reason step by step, then put the final answer in \\boxed{}."
_MCQ_INSTRUCTION = "Answer with the letter of the correct option in \\boxed{}."


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(0, len(seq)))]


def _distractors(v: int, rng: np.random.Generator) -> list[int]:
    cands = [v + 1, v - 1, v + 2, v - 2, v + 10, v - 10, v * 2, v + 100, (v * 3) // 2 + 1, v + 7]
    out: list[int] = []
    for c in rng.permutation(cands):
        c = int(c)
        if c >= 0 and c != v and c not in out:
            out.append(c)
        if len(out) == 3:
            break
    return out


@functools.lru_cache(maxsize=32)
def generate_set(name: str, size: int = DEFAULT_SET_SIZE, seed: int = 0) -> tuple[PromptItem, ...]:
    """The built-in set ``name`` (see BUILTIN_PROMPT_SETS): ``size`` items, the same for the same seed."""
    if name not in _TIERS:
        raise ValueError(f"unknown built-in prompt set {name!r}; known: {', '.join(BUILTIN_PROMPT_SETS)}")
    (k_lo, k_hi), leaves, weights = _TIERS[name]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))
    items: list[PromptItem] = []
    difficulty = _DIFFICULTY[name]
    for i in range(size):
        k = int(rng.integers(k_lo, k_hi + 1))
        node = _expression(k, leaves, weights, rng)
        fill = {
            "who": _pick(rng, _WHO),
            "things": _pick(rng, _THINGS),
            "place": _pick(rng, _PLACES),
            "event": _pick(rng, _EVENTS),
            "field": _pick(rng, _FIELDS),
        }
        if name == "mcq":
            options = [node.value, *_distractors(node.value, rng)]
            order = rng.permutation(4)
            shown = [options[j] for j in order]
            letter = "ABCD"[int(np.where(order == 0)[0][0])]
            body = _pick(rng, _MCQ).format(**fill).replace("EXPR", node.text)
            lines = "\n".join(f"({c}) {o}" for c, o in zip("ABCD", shown, strict=True))
            text = f"{body}\n{lines}\n{_MCQ_INSTRUCTION}"
            items.append(PromptItem(f"{name}-{i:04d}", text, letter, "choice", difficulty))
        else:
            tpl = {"math-easy": _EASY, "math-medium": _MEDIUM, "math-hard": _HARD}[name]
            body = _pick(rng, tpl).format(**fill).replace("EXPR", node.text)
            items.append(
                PromptItem(
                    f"{name}-{i:04d}", f"{body} {_MATH_INSTRUCTION}", str(node.value), "number", difficulty
                )
            )
    return tuple(items)


# ================================================================================================ datasets


def load_prompt_source(
    src: PromptSource, base_dir: str | Path | None = None, seed: int = 0
) -> list[PromptItem]:
    """The items of one class's prompt source.

    Built-in sets are generated from ``seed`` (``src.limit`` items, default :data:`DEFAULT_SET_SIZE`).
    Files are read with the source's column mapping, relative paths against ``base_dir``; ``seed`` shuffles
    the options of multiple-choice rows built from ``distractors`` columns. Errors are UserErrors naming the
    file, the row and the column.
    """
    if src.builtin is not None:
        return list(generate_set(src.builtin, src.limit or DEFAULT_SET_SIZE, seed))
    if src.file is None:
        raise UserError("a prompt source has neither builtin nor file", 'set prompts = "math-easy" or a file')
    path = Path(src.file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    rows = _read_rows(path, src.format or path.suffix.lower().lstrip("."))
    if src.limit is not None:
        rows = rows[: src.limit]
    if not rows:
        raise UserError(f"dataset {path} has no rows", "pick another file or check prompts.format")
    items = [_item(src, path, i, row, seed) for i, row in enumerate(rows)]
    return items


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt in ("jsonl", "ndjson"):
            rows = []
            for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(orjson.loads(line))
                    except orjson.JSONDecodeError as e:
                        raise UserError(
                            f"dataset {path}, line {lineno}: not JSON ({e})",
                            "each line must be one JSON object",
                        ) from e
        elif fmt == "json":
            data = orjson.loads(path.read_bytes())
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 else data
            if not isinstance(data, list):
                raise UserError(
                    f"dataset {path}: expected a JSON list of objects", "or use JSON lines (.jsonl)"
                )
            rows = data
        elif fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        elif fmt in ("parquet", "pq"):
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise UserError(f"reading {path} needs pyarrow", "pip install 'rllmtop[parquet]'") from e
            rows = pq.read_table(path).to_pylist()
        else:
            raise UserError(
                f"dataset {path}: unknown format {fmt!r}", "set prompts.format: jsonl, json, csv or parquet"
            )
    except OSError as e:
        raise UserError(f"cannot read dataset {path}: {e}", "check prompts.file") from e
    except orjson.JSONDecodeError as e:
        raise UserError(f"dataset {path}: not JSON ({e})", "check prompts.format") from e
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(
                f"dataset {path}, row {i + 1}: not an object/record", "each row needs named columns"
            )
    return rows


def _col(path: Path, row: dict[str, Any], i: int, col: str, field: str) -> Any:
    if col not in row:
        have = ", ".join(map(str, row)) or "(none)"
        raise UserError(
            f"dataset {path}, row {i + 1}: no column {col!r} (prompts.{field}); columns: {have}",
            f"set prompts.{field} to the right column",
        )
    return row[col]


_LETTERS = string.ascii_uppercase


def _item(src: PromptSource, path: Path, i: int, row: dict[str, Any], seed: int) -> PromptItem:
    question = str(_col(path, row, i, src.question, "question"))
    item_id = str(_col(path, row, i, src.id, "id")) if src.id else f"{path.stem}-{i:05d}"
    options: list[str] = []
    reference: str | None = None
    kind = ""
    raw_answer = _col(path, row, i, src.answer, "answer") if src.answer else None
    if src.distractors:
        correct = str(raw_answer).strip() if raw_answer is not None else ""
        wrong = [str(_col(path, row, i, c, "distractors")).strip() for c in src.distractors]
        opts = [correct, *wrong]
        order = np.random.default_rng(
            np.random.SeedSequence([int(seed), zlib.crc32(item_id.encode())])
        ).permutation(len(opts))
        options = [opts[j] for j in order]
        reference = _LETTERS[int(np.where(order == 0)[0][0])] if raw_answer is not None else None
        kind = "choice" if reference else ""
    elif src.choices:
        raw = _col(path, row, i, src.choices, "choices")
        if isinstance(raw, str):
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raw = [c.strip() for c in raw.split("|")]
        if not isinstance(raw, list | tuple) or not raw:
            raise UserError(
                f"dataset {path}, row {i + 1}: column {src.choices!r} is not a list of options",
                "choices must be a list (JSON list, or options separated by |)",
            )
        options = [str(c) for c in raw]
        if raw_answer is not None:
            reference = _choice_letter(raw_answer, options)
            if reference is None:
                raise UserError(
                    f"dataset {path}, row {i + 1}: answer {raw_answer!r} is not an option index, letter "
                    "or option text",
                    "check prompts.answer",
                )
            kind = "choice"
    elif raw_answer is not None:
        reference, kind = _reference(str(raw_answer), src.answer_format)
    rendered = "\n".join(f"({_LETTERS[j]}) {o}" for j, o in enumerate(options))
    if src.template is not None:
        text = src.template.format(question=question, choices=rendered)
    else:
        parts = [question.strip()]
        if rendered:
            parts.append(rendered)
        parts.append(_MCQ_INSTRUCTION if options else "Put the final answer in \\boxed{}.")
        text = "\n".join(parts)
    return PromptItem(item_id, text, reference, kind, src.difficulty or "")


def _choice_letter(answer: Any, options: Sequence[str]) -> str | None:
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return _LETTERS[answer]
    s = str(answer).strip()
    if len(s) == 1 and s.upper() in _LETTERS[: len(options)]:
        return s.upper()
    if s.isdigit() and int(s) < len(options):
        return _LETTERS[int(s)]
    for j, o in enumerate(options):
        if o.strip() == s:
            return _LETTERS[j]
    return None


def _reference(answer: str, fmt: str) -> tuple[str | None, str]:
    from rllmtop.workload.grading import last_boxed, normalize_number

    s = answer.strip()
    if fmt == "gsm8k":
        s = s.rsplit("####", 1)[-1].strip()
    elif fmt == "boxed":
        b = last_boxed(s)
        s = b.strip() if b is not None else s
    elif fmt == "choice":
        s = s.strip("() .").upper()
        return (s, "choice") if s else (None, "")
    if not s:
        return None, ""
    return s, "number" if normalize_number(s) is not None else "text"


# ================================================================================================ the mix


def load_scenario_prompts(scenario: Scenario) -> list[list[PromptItem]]:
    """The items of every class of the scenario, in class order (files resolved next to the scenario)."""
    base = Path(scenario.path).parent if scenario.path else None
    return [load_prompt_source(c.prompts, base, scenario.seed) for c in scenario.classes]


class PromptMix:
    """Which class and which prompt each request gets: classes drawn by weight, and each class's items
    walked in a seeded random order without repetition until its set is used up (then reshuffled)."""

    def __init__(
        self, classes: Sequence[RequestClass], items: Sequence[Sequence[PromptItem]], seed: int
    ) -> None:
        if len(classes) != len(items) or not classes:
            raise ValueError("one item list per class is needed")
        for c, it in zip(classes, items, strict=True):
            if not it:
                raise UserError(f"class {c.name!r} has no prompts", "check its prompts source")
        self.classes = tuple(classes)
        self.items = [tuple(x) for x in items]
        self.seed = seed
        w = np.array([c.weight for c in classes], dtype=float)
        self._p = w / w.sum()
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4D4958]))
        self._orders: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in classes]
        self._pos = [0] * len(classes)

    def draw(self, n: int) -> list[tuple[int, PromptItem]]:
        """The next ``n`` requests as (class index, item)."""
        cls = self._rng.choice(len(self.classes), size=n, p=self._p) if n else np.empty(0, dtype=np.int64)
        out: list[tuple[int, PromptItem]] = []
        for c in cls.tolist():
            if self._pos[c] >= len(self._orders[c]):
                self._orders[c] = self._rng.permutation(len(self.items[c]))
                self._pos[c] = 0
            out.append((c, self.items[c][int(self._orders[c][self._pos[c]])]))
            self._pos[c] += 1
        return out

    def class_draws(self, total: int, chunk: int) -> Iterator[np.ndarray]:
        """The class indices of a fresh ``draw(total)``, ``chunk`` at a time, without drawing the items."""
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 0x4D4958]))
        cdf = self._p.cumsum()
        cdf /= cdf[-1]
        for i in range(0, total, chunk):
            yield cdf.searchsorted(rng.random(min(chunk, total - i)), side="right")

    def draws(self, total: int) -> MixDraws:
        """The picks of a fresh ``draw(total)``, taken a few at a time (``MixDraws.take``) without holding
        them: the same classes and items in the same order, whatever the steps."""
        return MixDraws(self, total)


class MixDraws:
    """Lazy ``PromptMix.draw(total)``: its class draws come first from the mix's random stream and its
    reshuffles after them, so two generators stand in for the one: one for the classes, one advanced past
    the ``total`` doubles the class draws consume (PCG64 ``advance``), for the permutations."""

    def __init__(self, mix: PromptMix, total: int) -> None:
        self._mix = mix
        seq = np.random.SeedSequence([int(mix.seed), 0x4D4958])
        self._classes = np.random.default_rng(seq)
        perm = np.random.PCG64(seq)
        if total:
            perm.advance(total)  # Generator.choice(p=...) draws one double (one 64-bit step) per pick
        self._perm = np.random.Generator(perm)
        cdf = mix._p.cumsum()
        cdf /= cdf[-1]
        self._cdf = cdf
        self._left = total
        self._orders: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in mix.classes]
        self._pos = [0] * len(mix.classes)

    def take(self, m: int) -> tuple[np.ndarray, list[PromptItem]]:
        """The next ``m`` picks: class indices and items."""
        if m > self._left:
            raise ValueError(f"only {self._left} picks left, not {m}")
        self._left -= m
        cls = self._cdf.searchsorted(self._classes.random(m), side="right")
        items: list[PromptItem] = []
        orders, pos, sets = self._orders, self._pos, self._mix.items
        for c in cls.tolist():
            if pos[c] >= len(orders[c]):
                orders[c] = self._perm.permutation(len(sets[c]))
                pos[c] = 0
            items.append(sets[c][int(orders[c][pos[c]])])
            pos[c] += 1
        return cls, items
