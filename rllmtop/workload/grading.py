"""Answer extraction and scoring: the A of ASU.

Extraction order: the last ``\\boxed{...}`` (or ``\\fbox{...}``); else the last "the answer is X" /
"final answer: X"; else, for numbers, the last number in the text and, for multiple choice, the last
standalone option letter. Numbers are compared after normalisation (commas, ``$``, trailing ``.0``, simple
``\\frac{a}{b}``, percent signs); LaTeX answers (MATH-500) after stripping spacing and sizing commands.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["extract_answer", "grade", "last_boxed", "normalize_number", "normalize_text"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*[:=]|answer\s*[:=])\s*[:\s]*(.+?)(?:\n|$)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_CHOICE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def normalize_number(s: str) -> str | None:
    """A canonical string for a number written in ``s`` ("1,234.0" -> "1234", "\\frac{1}{2}" -> "1/2"),
    or None when ``s`` is not a single number."""
    t = s.strip().strip("$").strip()
    t = _TEXT_WRAP.sub(r"\1", t)
    t = t.replace("\\$", "").replace("\\!", "").replace("\\,", "").replace("\\%", "").replace("%", "")
    t = t.replace(" ", "").rstrip(".")
    if t.startswith("+"):
        t = t[1:]
    m = _FRAC.match(t)
    try:
        if m:
            if int(m.group(3)) == 0:
                return None
            v = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        elif re.fullmatch(r"-?\d+/\d+", t):
            num, den = t.split("/")
            if int(den) == 0:
                return None
            v = Fraction(int(num), int(den))
        elif re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", t):
            v = Fraction(t.replace(",", ""))
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    if v.denominator == 1:
        return str(v.numerator)
    return f"{v.numerator}/{v.denominator}"


def normalize_text(s: str) -> str:
    """Loose canonical form of a LaTeX/text answer (spacing, sizing, \\text{}, dfrac, degrees)."""
    t = s.strip().strip("$")
    t = _TEXT_WRAP.sub(r"\1", t)
    for a, b in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\displaystyle", ""),
    ):
        t = t.replace(a, b)
    t = re.sub(r"\s+", "", t).rstrip(".")
    return t


def extract_answer(text: str | None, kind: str) -> str | None:
    """The final answer written in ``text`` for a grading kind ("number" | "choice" | "text")."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        cand = boxed.strip()
    else:
        said = _ANSWER_IS.findall(text)
        cand = said[-1].strip().rstrip(".") if said else ""
        if kind == "number" and cand and normalize_number(cand) is None:
            nums = _NUMBER.findall(cand)
            cand = nums[0] if nums else ""
        if not cand:
            if kind == "number":
                nums = _NUMBER.findall(text)
                cand = nums[-1] if nums else ""
            elif kind == "choice":
                letters = _CHOICE.findall(text)
                cand = letters[-1] if letters else ""
    if not cand:
        return None
    if kind == "choice":
        m = _CHOICE.search(_TEXT_WRAP.sub(r"\1", cand))
        return m.group(1).upper() if m else cand
    if kind == "number":
        return normalize_number(cand) or cand
    return cand


def grade(answer_text: str | None, reference: str | None, kind: str) -> tuple[str | None, bool | None]:
    """(extracted answer, correct). ``correct`` is None when there is no reference to grade against;
    a missing or unreadable answer is graded wrong."""
    extracted = extract_answer(answer_text, kind or "text")
    if reference is None or not kind:
        return extracted, None
    if extracted is None:
        return None, False
    if kind == "choice":
        return extracted, extracted.strip().upper() == reference.strip().strip("()").upper()
    ref_num = normalize_number(reference)
    got_num = normalize_number(extracted)
    if ref_num is not None and got_num is not None:
        return extracted, ref_num == got_num
    return extracted, normalize_text(extracted) == normalize_text(reference)
