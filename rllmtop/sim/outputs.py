"""What the simulated model says: prompt analysis, seeded output plans and their token text.

The protocol with rllmtop's generated prompt sets: the arithmetic core of a problem is one expression
between ``$`` delimiters (non-negative integers, ``+ - *``, ``^`` power, ``mod``, parentheses; at least
one operator). The simulator evaluates it itself, so it knows the reference answer without the client
sending it. The difficulty tier is the number of binary operators (1-3 easy, 4-6 medium, >= 7 hard);
option lines ``(A) <int>`` .. ``(D) <int>`` make it a multiple-choice ("mcq") item whose answer is a
letter.

The tier comes, in this order, from the request's declared difficulty (the client sends a class's
``difficulty`` in the ``x-rllmtop-difficulty`` header), from the protocol expression, or, for any
other prompt (a user's GSM8K / MATH-500 / AIME file), from :func:`rllmtop.sim.difficulty.
estimate_difficulty` (length, LaTeX markers, competition phrasing, option lines). Prompts without a
protocol expression get an arbitrary reference answer (a number, or a letter for multiple choice).

Reasoning controls (see :func:`make_plan`): ``reasoning_effort`` scales the planned reasoning length and
moves the accuracy by the profile's per-level factors (:class:`EffortModel`); a thinking budget caps the
reasoning, after which the think block closes and the answer follows, keeping only the share of the
thinking gain in accuracy that the reasoning done covers; ``ignore_eos`` continues the answer to
``max_tokens`` (finish reason "length").

Every draw (lengths, correctness, text) comes from an RNG keyed by the server seed, the request's
``seed`` (or the prompt's occurrence count) and the prompt text, so the same scenario and seed give the
same token counts whatever the timing.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import re
import zlib
from dataclasses import dataclass, field

import orjson

from rllmtop.sim.difficulty import estimate_difficulty, option_letters

__all__ = [
    "DEFAULT_EFFORT",
    "EFFORT_LEVELS",
    "TIERS",
    "EffortModel",
    "OutputModel",
    "OutputPlan",
    "PromptInfo",
    "RequestFactory",
    "TierModel",
    "analyze_prompt",
    "ensure_piece_bytes",
    "evaluate_expression",
    "make_plan",
    "piece_text",
    "render_chat",
    "request_key",
    "stand_in_prompt_tokens",
    "tokenize",
]

TIERS = ("easy", "medium", "hard", "mcq")
EFFORT_LEVELS = ("low", "medium", "high")

# --------------------------------------------------------------------------------------------------
# Tokenizer: a deterministic stand-in (words, single digits, punctuation, whitespace runs)
# --------------------------------------------------------------------------------------------------

_PIECE_RE = re.compile(r" ?[A-Za-z]+| ?[^\sA-Za-z0-9]|[0-9]|\s+")
_VOCAB_SIZE = 151_000
_prompt_ids: dict[str, int] = {}


def tokenize(text: str, scale: float = 1.0) -> list[int]:
    """Token ids of ``text`` (stable across processes: crc32 of each piece).

    ``scale``: the engine's tokens per piece (a calibrated profile's ``model.prompt_token_scale``). The
    n-th piece becomes floor((n+1)*scale) - floor(n*scale) tokens, so N pieces make floor(N*scale) tokens,
    and a prefix of a text still tokenizes to a prefix of its ids (the prefix cache sees the same blocks).
    """
    pieces = _PIECE_RE.findall(text)
    ids = _prompt_ids
    if len(ids) > 200_000:
        ids.clear()
    out = []
    for p in pieces:
        i = ids.get(p)
        if i is None:
            i = ids[p] = zlib.crc32(p.encode()) % _VOCAB_SIZE
        out.append(i)
    if scale == 1.0:
        return out
    scaled: list[int] = []
    for n, i in enumerate(out):
        k = math.floor((n + 1) * scale) - math.floor(n * scale)
        scaled.extend((i + 7919 * j) % _VOCAB_SIZE for j in range(k))
    return scaled


# Output vocabulary: ids index these pieces; each piece is pre-encoded as JSON-escaped UTF-8 bytes.
_FILLER = (
    " Hmm, let me make sure I read the problem correctly.",
    " Let me verify each step again to be careful.",
    " Wait, I should double-check that multiplication.",
    " Alternatively, I could group the terms differently and see if I get the same result.",
    " Let me recount the operations in the expression one by one.",
    " That seems consistent with what I found before.",
    " Actually, hold on, let me reconsider the order of operations here.",
    " Powers come first, then multiplication and remainders, then addition and subtraction.",
    " So far the intermediate values look right.",
    " Let me try a quick sanity check by estimating the size of the result.",
    " Okay, the estimate is in the right range.",
    " But I should be careful not to drop a sign somewhere.",
    " Let me write the partial results down again.",
    " Hmm, is there another way to interpret the question?",
    " No, the question clearly asks for the value of the expression.",
    " I think the reasoning holds, but one more check would not hurt.",
    " Let me redo the last step slowly.",
    " Yes, that matches.",
    " Maybe I made an arithmetic slip earlier, so let me compare with the first pass.",
    " Both passes agree, which is reassuring.",
    " Let me also consider whether the answer should be an integer.",
    " Since there is no division, the result must be an integer.",
    " Good, so there is no rounding to worry about.",
    " Now let me think about whether any option could be a trap.",
)
_SPECIAL = ("<think>\n", "</think>", "\n\n", "\\boxed", "{", "}")
_pieces: list[str] = []
_piece_id: dict[str, int] = {}


def _vocab_id(piece: str) -> int:
    i = _piece_id.get(piece)
    if i is None:
        i = _piece_id[piece] = len(_pieces)
        _pieces.append(piece)
    return i


for _p in _SPECIAL:
    _vocab_id(_p)
for _d in "0123456789":
    _vocab_id(_d)
_FILLER_IDS: list[int] = []
_FILLER_STARTS: list[int] = []
for _s in _FILLER:
    _FILLER_STARTS.append(len(_FILLER_IDS))
    _FILLER_IDS.extend(_vocab_id(p) for p in _PIECE_RE.findall(_s))
THINK_OPEN_ID = _piece_id["<think>\n"]
THINK_END_ID = _piece_id["</think>"]


def _encode(text: str) -> list[int]:
    return [_vocab_id(p) for p in _PIECE_RE.findall(text)]


def piece_text(token_id: int) -> str:
    return _pieces[token_id]


def ensure_piece_bytes() -> list[bytes]:
    """The JSON-escaped UTF-8 bytes (no quotes) of every output token's text, indexed by id."""
    n = len(_piece_json)
    if n < len(_pieces):
        _piece_json.extend(orjson.dumps(p)[1:-1] for p in _pieces[n:])
    return _piece_json


_piece_json: list[bytes] = []

# --------------------------------------------------------------------------------------------------
# Prompt analysis: the `$...$` expression, its value and tier, multiple-choice options
# --------------------------------------------------------------------------------------------------

_EXPR_RE = re.compile(r"\$([^$]{1,2000})\$")
_OPTION_RE = re.compile(r"^\s*\(([A-Z])\)\s*(-?\d+)\s*$", re.MULTILINE)
_ALLOWED_EXPR = re.compile(r"^[0-9\s+\-*^()]*$")
_MAX_ABS = 10**60
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Pow: "^", ast.Mod: "mod"}


class _Refused(Exception):
    pass


@dataclass(frozen=True)
class _Step:
    left: int
    op: str
    right: int
    value: int


def _eval(node: ast.AST, steps: list[_Step]) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a = _eval(node.left, steps)
        b = _eval(node.right, steps)
        op = type(node.op)
        if op is ast.Add:
            v = a + b
        elif op is ast.Sub:
            v = a - b
        elif op is ast.Mult:
            v = a * b
        elif op is ast.Mod:
            if b == 0:
                raise _Refused("remainder by zero")
            v = a % b
        else:
            if b < 0 or b > 64 or (abs(a) > 1 and b * math.log2(abs(a)) > 200):
                raise _Refused("power too large")
            v = a**b
        if abs(v) > _MAX_ABS:
            raise _Refused("value too large")
        steps.append(_Step(a, _OPS[op], b, v))
        return v
    raise _Refused("not in the grammar")


def evaluate_expression(expr: str) -> tuple[int, int] | None:
    """(value, number of binary operators) of a `$...$` expression, or None if outside the grammar.

    Grammar: non-negative integers, ``+ - *``, ``^`` (power), ``mod`` (remainder), parentheses.
    Bounded: huge powers and values beyond 10^60 are refused.
    """
    v = _evaluate(expr)
    return None if v is None else (v[0], len(v[1]))


def _evaluate(expr: str) -> tuple[int, list[_Step]] | None:
    text = re.sub(r"\bmod\b", "%", expr.strip())
    if not text or len(text) > 2000 or "**" in text or not _ALLOWED_EXPR.match(text.replace("%", "")):
        return None
    text = text.replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
        steps: list[_Step] = []
        value = _eval(tree.body, steps)
    except (SyntaxError, ValueError, RecursionError, _Refused, MemoryError):
        return None
    return value, steps


def _tier_for_ops(n_ops: int) -> str:
    return "easy" if n_ops <= 3 else "medium" if n_ops <= 6 else "hard"


@dataclass(frozen=True)
class PromptInfo:
    """What the simulator infers from a prompt."""

    tier: str  # "easy" | "medium" | "hard" | "mcq"
    expression: str | None  # the `$...$` text, None if the prompt has none
    value: int | None  # the expression's value
    reference: str  # the correct final answer: a number, or a letter for mcq
    options: tuple[tuple[str, int], ...] = ()  # mcq options (letter, value)
    steps: tuple[_Step, ...] = ()
    tier_source: str = "expression"  # "declared" | "expression" | "estimate"


def analyze_prompt(text: str, difficulty: str | None = None) -> PromptInfo:
    """Tier, expression value and reference answer of a prompt (see the module docstring).

    ``difficulty``: the tier the client declared (one of :data:`TIERS`); it wins over the prompt's.
    """
    declared = difficulty if difficulty in TIERS else None
    evaluated = None
    expr = None
    for m in reversed(_EXPR_RE.findall(text)):
        evaluated = _evaluate(m)
        if evaluated is not None and evaluated[1]:
            expr = m.strip()
            break
        evaluated = None
    options = tuple((letter, int(v)) for letter, v in _OPTION_RE.findall(text))
    source = "declared" if declared else "expression"
    if evaluated is None:
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        estimate = estimate_difficulty(text)
        tier = declared or estimate.tier
        source = "declared" if declared else "estimate"
        letters = tuple(lt for lt, _ in options) if len(options) >= 2 else estimate.options
        if letters or tier == "mcq":
            letters = letters or ("A", "B", "C", "D")
            return PromptInfo(tier, None, None, letters[h % len(letters)], options, (), source)
        return PromptInfo(tier, None, None, str((h >> 8) % 1000), (), (), source)
    value, steps = evaluated
    if len(options) >= 2:
        letter = next((lt for lt, v in options if v == value), None)
        if letter is None:
            letter = options[abs(value) % len(options)][0]
        return PromptInfo(declared or "mcq", expr, value, letter, options, tuple(steps), source)
    tier = declared or _tier_for_ops(len(steps))
    if tier == "mcq":  # declared multiple choice without option lines: the answer is still a letter
        letters = option_letters(text) or ("A", "B", "C", "D")
        return PromptInfo(tier, expr, value, letters[abs(value) % len(letters)], (), tuple(steps), source)
    return PromptInfo(tier, expr, value, str(value), (), tuple(steps), source)


# --------------------------------------------------------------------------------------------------
# Output plans
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierModel:
    """A profile's output model for one difficulty tier (lengths in tokens, lognormal)."""

    reasoning_median: float
    reasoning_sigma: float
    answer_median: float
    answer_sigma: float
    accuracy: float
    accuracy_no_thinking: float
    answer_median_no_thinking: float


@dataclass(frozen=True)
class EffortModel:
    """A profile's effect of one ``reasoning_effort`` level: planned reasoning length x
    ``reasoning_factor``, tier accuracy + ``accuracy_delta`` (clamped to [0, 1])."""

    reasoning_factor: float
    accuracy_delta: float


DEFAULT_EFFORT: dict[str, EffortModel] = {
    "low": EffortModel(0.35, -0.08),
    "medium": EffortModel(1.0, 0.0),
    "high": EffortModel(1.6, 0.03),
}
"""Effort factors of the built-in profiles (a request without ``reasoning_effort`` is "medium")."""


@dataclass(frozen=True)
class OutputPlan:
    """A request's whole output, decided at arrival.

    ``token_ids`` holds every output token: ``reasoning_tokens`` reasoning tokens, then (when the
    request thinks) one end-of-thinking token, then the answer, already cut at ``max_tokens``.
    """

    token_ids: list[int]
    reasoning_tokens: int  # reasoning tokens actually emitted (<= planned)
    thinking: bool  # the request reasons: an end-of-thinking token follows the reasoning (unless cut)
    finish_reason: str  # "stop" | "length"
    tier: str
    reference: str
    answer: str  # the final answer the text commits to (may be wrong)
    correct: bool  # answer == reference (False as well when cut before the answer)
    planned_reasoning: int
    planned_answer: int
    budget_cut: bool = False  # a thinking budget closed the reasoning before its planned end

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def answer_start(self) -> int:
        """Index of the first answer token (may equal n_tokens or more when cut during reasoning)."""
        return self.reasoning_tokens + 1 if self.thinking else 0


def request_key(server_seed: int, request_seed: int | None, prompt: str, occurrence: int, mode: str) -> int:
    """The 64-bit RNG key of one request (see the module docstring)."""
    if request_seed is not None:
        material = f"{server_seed}\x00s{request_seed}\x00{mode}\x00{prompt}"
    else:
        material = f"{server_seed}\x00o{occurrence}\x00{mode}\x00{prompt}"
    return int.from_bytes(hashlib.blake2b(material.encode(), digest_size=8).digest(), "big")


def _lognormal(rng: random.Random, median: float, sigma: float) -> int:
    if median <= 0:
        return 0
    return max(1, round(median * math.exp(sigma * rng.gauss(0.0, 1.0))))


def _wrong_answer(info: PromptInfo, rng: random.Random) -> str:
    if info.options:
        letters = [lt for lt, _ in info.options if lt != info.reference]
        return rng.choice(letters) if letters else info.reference
    if info.reference.isalpha():  # a letter: multiple choice without parsed integer options
        return rng.choice([c for c in "ABCD" if c != info.reference])
    ref = int(info.reference)
    delta = max(1, abs(ref) // rng.choice((5, 10, 20, 100)))
    delta = rng.randint(1, delta) * rng.choice((-1, 1))
    return str(ref + delta)


def _reasoning_ids(
    info: PromptInfo, answer: str, n: int, rng: random.Random, *, conclude: bool = True
) -> list[int]:
    """``n`` reasoning tokens; ``conclude`` False: reasoning cut off before it reached an answer."""
    if n <= 0:
        return []
    head_text = "Okay, let me work through this step by step."
    if info.expression is not None:
        head_text += f" The expression is {info.expression}."
        for k, s in enumerate(info.steps):
            word = "First" if k == 0 else rng.choice(("Next", "Then", "Now"))
            head_text += f" {word}, {s.left} {s.op} {s.right} = {s.value}."
    tail_text = f" So the final answer is {answer}.\n" if conclude else ""
    head, tail = _encode(head_text), _encode(tail_text)
    if n <= len(tail):
        return tail[-n:]
    if n <= len(head) + len(tail):
        return head[: n - len(tail)] + tail
    fill = n - len(head) - len(tail)
    f = _FILLER_IDS
    start = rng.choice(_FILLER_STARTS)
    body: list[int] = []
    while len(body) < fill:
        body.extend(f[start : start + fill - len(body)])
        start = 0
    return head + body + tail


def _answer_ids(info: PromptInfo, answer: str, n: int) -> list[int]:
    tail = [
        *_encode(" Therefore, the final answer is "),
        _piece_id["\\boxed"],
        _piece_id["{"],
        *_encode(answer),
        _piece_id["}"],
        *_encode("."),
    ]
    head_text = "\n\n"
    if info.expression is not None:
        head_text += f"We evaluate {info.expression}."
        for s in info.steps:
            head_text += f" {s.left} {s.op} {s.right} = {s.value}."
    else:
        head_text += "Working through the question gives the result below."
    head = _encode(head_text)
    if n <= len(tail):
        return tail
    if n <= len(head) + len(tail):
        return head[: n - len(tail)] + tail
    fill = n - len(head) - len(tail)
    f = _FILLER_IDS
    body: list[int] = []
    while len(body) < fill:
        body.extend(f[: fill - len(body)])
    return head + body + tail


def _filler_ids(n: int) -> list[int]:
    f = _FILLER_IDS
    out: list[int] = []
    while len(out) < n:
        out.extend(f[: n - len(out)])
    return out


def make_plan(
    info: PromptInfo,
    tier_model: TierModel,
    *,
    key: int,
    thinking: bool,
    max_tokens: int,
    runaway_probability: float = 0.0,
    wrong_length_factor: float = 1.0,
    effort: EffortModel | None = None,
    thinking_budget: int | None = None,
    ignore_eos: bool = False,
) -> OutputPlan:
    """Draw a request's output (lengths, correctness, text) from its tier model.

    ``thinking`` False (or a plain profile, ``reasoning_median == 0``): no reasoning, short answer,
    ``accuracy_no_thinking``. A runaway request reasons until ``max_tokens`` cuts it (a straggler).

    Reasoning controls (only for a request that reasons): ``effort`` multiplies the planned reasoning
    length by its ``reasoning_factor`` and adds ``accuracy_delta`` to the accuracy; a
    ``thinking_budget`` smaller than the planned reasoning ends the reasoning there (the think block
    closes, the answer follows) and the accuracy keeps only that share of the thinking gain:
    ``accuracy_no_thinking + (accuracy - accuracy_no_thinking) x budget / planned``. ``ignore_eos``:
    the answer continues to ``max_tokens`` (finish reason "length"; correct when the answer fitted).
    The draws without these controls are the same as before they existed.
    """
    rng = random.Random(key)
    reasons = thinking and tier_model.reasoning_median > 0
    accuracy = tier_model.accuracy if reasons else tier_model.accuracy_no_thinking
    if reasons and effort is not None:
        accuracy = min(1.0, max(0.0, accuracy + effort.accuracy_delta))
    correct = rng.random() < accuracy
    answer = info.reference if correct else _wrong_answer(info, rng)
    if reasons:
        r = _lognormal(rng, tier_model.reasoning_median, tier_model.reasoning_sigma)
        if effort is not None and effort.reasoning_factor != 1.0:
            r = max(1, round(r * effort.reasoning_factor))
        if not correct:
            r = round(r * wrong_length_factor)
        if rng.random() < runaway_probability:
            r = max(r, max_tokens)
        a = _lognormal(rng, tier_model.answer_median, tier_model.answer_sigma)
    else:
        r = 0
        median = tier_model.answer_median if tier_model.reasoning_median <= 0 else None
        a = _lognormal(rng, median or tier_model.answer_median_no_thinking, tier_model.answer_sigma)
    planned = r
    budget_cut = False
    if reasons and thinking_budget is not None and r > thinking_budget:
        budget_cut = True
        base = tier_model.accuracy_no_thinking
        kept = base + (accuracy - base) * thinking_budget / r if accuracy > base else accuracy
        if correct and rng.random() * accuracy >= kept:
            correct = False
            answer = _wrong_answer(info, rng)
        r = thinking_budget
    max_tokens = max(1, max_tokens)
    if reasons:
        reasoning = _reasoning_ids(info, answer, min(r, max_tokens), rng, conclude=not budget_cut)
        ids = [*reasoning, THINK_END_ID, *_answer_ids(info, answer, a)] if r < max_tokens else reasoning
    else:
        reasoning = []
        ids = _answer_ids(info, answer, a)
    cut = r >= max_tokens or len(ids) > max_tokens
    if ignore_eos and len(ids) < max_tokens:
        ids.extend(_filler_ids(max_tokens - len(ids)))
    return OutputPlan(
        token_ids=ids[:max_tokens],
        reasoning_tokens=len(reasoning),
        thinking=reasons,
        finish_reason="length" if cut or ignore_eos else "stop",
        tier=info.tier,
        reference=info.reference,
        answer=answer,
        correct=correct and not cut,
        planned_reasoning=planned,
        planned_answer=a,
        budget_cut=budget_cut,
    )


@dataclass(frozen=True)
class OutputModel:
    """A profile's output model: per-tier distributions plus straggler and wrong-answer behaviour."""

    tiers: dict[str, TierModel]
    runaway_probability: float = 0.0
    wrong_length_factor: float = 1.0
    effort: dict[str, EffortModel] = field(default_factory=lambda: dict(DEFAULT_EFFORT))

    @property
    def reasons(self) -> bool:
        return any(t.reasoning_median > 0 for t in self.tiers.values())


def render_chat(messages: list[tuple[str, str]], *, thinking: bool = True, reasons: bool = True) -> str:
    """The prompt text a DeepSeek-R1-style chat template makes of (role, text) messages.

    The whole history is rendered, so consecutive turns of a conversation share a prefix (the prefix
    cache reuses it). Earlier assistant turns lose their reasoning as the R1 / Qwen3 templates do:
    everything up to the last ``</think>`` is dropped.
    """
    parts = ["<|begin_of_sentence|>"]
    for role, text in messages:
        if role == "system":
            parts.append(text)
        elif role == "assistant":
            if "</think>" in text:
                text = text.rsplit("</think>", 1)[1]
            parts.append(f"<|Assistant|>{text}<|end_of_sentence|>")
        else:
            parts.append(f"<|User|>{text}")
    parts.append("<|Assistant|>")
    if reasons:
        parts.append("<think>\n" if thinking else "<think>\n\n</think>\n\n")
    return "".join(parts)


def stand_in_prompt_tokens(api: str, system: str | None, text: str, thinking: bool, reasons: bool) -> int:
    """The tokens the simulator counts (at scale 1) for one single-turn request's prompt, rendered as its
    server renders it: ``api`` "chat" (an optional system message, the user's ``text``) or "completions"."""
    if api == "chat":
        msgs = [("system", system)] if system else []
        text = render_chat([*msgs, ("user", text)], thinking=thinking, reasons=reasons)
    return len(tokenize(text))


class RequestFactory:
    """Turns prompts into output plans, deterministically (see the module docstring).

    Without a request seed, the n-th occurrence of the same prompt text gets its own draw; the
    occurrence table grows with the number of distinct prompts seen.
    """

    def __init__(self, model: OutputModel, seed: int = 0) -> None:
        self.model = model
        self.seed = seed
        self._occurrences: dict[int, int] = {}

    def plan(
        self,
        prompt: str,
        *,
        max_tokens: int,
        request_seed: int | None = None,
        thinking: bool = True,
        analyze: str | None = None,
        difficulty: str | None = None,
        effort: str | None = None,
        thinking_budget: int | None = None,
        ignore_eos: bool = False,
    ) -> OutputPlan:
        """Plan the output for ``prompt`` (the rendered prompt; ``analyze``: the text to read the
        expression and difficulty from, default the prompt itself; ``difficulty``: a declared tier;
        ``effort``: "low" | "medium" | "high", None for the profile's "medium")."""
        mode = "think" if thinking else "nothink"
        occurrence = 0
        if request_seed is None:
            h = hash(prompt)
            occurrence = self._occurrences.get(h, 0)
            self._occurrences[h] = occurrence + 1
        key = request_key(self.seed, request_seed, prompt, occurrence, mode)
        info = analyze_prompt(prompt if analyze is None else analyze, difficulty)
        model = self.model
        return make_plan(
            info,
            model.tiers[info.tier],
            key=key,
            thinking=thinking,
            max_tokens=max_tokens,
            runaway_probability=model.runaway_probability,
            wrong_length_factor=model.wrong_length_factor,
            effort=model.effort.get(effort or "medium"),
            thinking_budget=thinking_budget,
            ignore_eos=ignore_eos,
        )
