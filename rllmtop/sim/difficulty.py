"""The difficulty tier of a prompt the simulator did not generate, estimated from its text.

Used when a request carries no ``x-rllmtop-difficulty`` header and its prompt has no ``$...$``
expression of the simulator's protocol (see :mod:`rllmtop.sim.outputs`). The rule, in points:

- **multiple choice** first: two or more option markers in order from A (``(A) ...``, ``A) ...``,
  ``A. ...`` or ``A: ...`` at the start of a line, or ``(A) ... (B) ...`` inline) make the tier ``mcq``;
- **LaTeX markers**: backslash commands such as ``\\frac``, ``\\sqrt``, ``\\cdot``, ``\\le``, every
  ``^`` and ``_``, and every inline math span ``$...$`` (not a currency amount: no word of three or more
  letters inside, and the closing ``$`` is not followed by a digit, so "costs $5, $8 and $12" is not
  mathematics): none 0 points, 1 to 5 one point, 6 or more two points;
- **competition phrases**, one point each (at most 3): "find the number of", "ordered pairs/triples",
  "remainder when", "divided by 1000", "relatively prime", "positive integers", "nonnegative integers",
  "least positive integer", "sum of all possible", "lattice points", "there exist(s)", "for some
  positive", and a final "find m+n"-style sum of unknowns; "prove" and "show that" count two;
- **length**: one more point for over 80 words, only when the prompt already scored (a long word
  problem without mathematics stays easy);
- 0 points ``easy`` (GSM8K-like word problems), 1-2 ``medium`` (MATH-500-like: some notation),
  3 or more ``hard`` (AIME-like: notation plus competition phrasing).

The phrases are matched on the lower-cased text with ``$`` signs removed and white space collapsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DifficultyEstimate", "estimate_difficulty", "option_letters"]

_LATEX_RE = re.compile(r"\\[A-Za-z]+|\^|_")
_MATH_SPAN_RE = re.compile(r"\$([^$\n]{1,200})\$(?!\s?\d)")
_PLAIN_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_LINE_OPTION_RE = re.compile(r"^\s*\(?([A-J])[).:]\s+\S", re.MULTILINE)
_INLINE_OPTION_RE = re.compile(r"\(([A-J])\)\s*\S")
_PHRASES: tuple[tuple[str, re.Pattern[str], int], ...] = tuple(
    (name, re.compile(pattern), weight)
    for name, pattern, weight in (
        ("find the number of", r"\bfind the number of\b", 1),
        ("ordered pairs/triples", r"\bordered (pairs?|triples?)\b", 1),
        ("remainder when", r"\bremainder when\b", 1),
        ("divided by 1000", r"\bdivided by 1000\b", 1),
        ("relatively prime", r"\brelatively prime\b", 1),
        ("positive integers", r"\bpositive integers\b", 1),
        ("nonnegative integers", r"\bnon-?negative integers\b", 1),
        ("least positive integer", r"\bleast positive integer\b", 1),
        ("sum of all possible", r"\bsum of all possible\b", 1),
        ("lattice points", r"\blattice points?\b", 1),
        ("there exist", r"\bthere exists?\b", 1),
        ("for some positive", r"\bfor some positive\b", 1),
        ("find m+n", r"\bfind [a-z](\s*\+\s*[a-z])+\s*\.?\s*$", 1),
        ("prove", r"\bprove\b", 2),
        ("show that", r"\bshow that\b", 2),
    )
)
_LONG_WORDS = 80


@dataclass(frozen=True)
class DifficultyEstimate:
    """The estimated tier and the features it was decided on."""

    tier: str  # "easy" | "medium" | "hard" | "mcq"
    points: int
    latex_markers: int
    phrases: tuple[str, ...]
    words: int
    options: tuple[str, ...]  # option letters, in order, when multiple choice


def option_letters(text: str) -> tuple[str, ...]:
    """Option letters A, B, ... of a multiple-choice prompt (empty unless at least two, in order)."""
    for pattern in (_LINE_OPTION_RE, _INLINE_OPTION_RE):
        seen: list[str] = []
        for letter in pattern.findall(text):
            expected = chr(ord("A") + len(seen))
            if letter == expected:
                seen.append(letter)
        if len(seen) >= 2:
            return tuple(seen)
    return ()


def estimate_difficulty(text: str) -> DifficultyEstimate:
    """The tier of ``text`` by the rule in the module docstring."""
    words = len(text.split())
    options = option_letters(text)
    latex = len(_LATEX_RE.findall(text))
    latex += sum(1 for span in _MATH_SPAN_RE.findall(text) if not _PLAIN_WORD_RE.search(span))
    flat = " ".join(text.replace("$", " ").lower().split())
    found = [(name, w) for name, pattern, w in _PHRASES if pattern.search(flat)]
    latex_points = 0 if latex == 0 else 1 if latex < 6 else 2
    phrase_points = min(3, sum(w for _, w in found))
    points = latex_points + phrase_points
    if points and words > _LONG_WORDS:
        points += 1
    if options:
        tier = "mcq"
    else:
        tier = "easy" if points == 0 else "medium" if points <= 2 else "hard"
    return DifficultyEstimate(tier, points, latex, tuple(n for n, _ in found), words, options)
