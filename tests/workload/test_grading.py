"""Answer extraction and scoring."""

from __future__ import annotations

import pytest

from rllmtop.workload.grading import extract_answer, grade, last_boxed, normalize_number


@pytest.mark.parametrize(
    ("text", "ref", "kind", "extracted", "correct"),
    [
        ("so the total is \\boxed{72}.", "72", "number", "72", True),
        ("first \\boxed{3} then corrected: \\boxed{1,234.0}", "1234", "number", "1234", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", "number", "1/2", True),
        ("\\boxed{\\text{42}}", "42", "number", "42", True),
        ("The answer is 17.", "17", "number", "17", True),
        ("Final answer: $-3$", "-3", "number", "-3", True),
        ("we get 5 apples, then 8, so 13", "13", "number", "13", True),
        ("it is 12", "13", "number", "12", False),
        ("no digits here", "13", "number", None, False),
        ("", "13", "number", None, False),
        ("Looking at the options, \\boxed{C}", "C", "choice", "C", True),
        ("\\boxed{(B) 851}", "B", "choice", "B", True),
        ("The answer is (D).", "D", "choice", "D", True),
        ("I pick A over B... final: (B)", "B", "choice", "B", True),
        ("\\boxed{\\text{A}}", "B", "choice", "A", False),
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", "text", "\\dfrac{14}{3}", True),
        ("\\boxed{ (3,\\frac{\\pi}{2}) }", "(3, \\frac{\\pi}{2})", "text", "(3,\\frac{\\pi}{2})", True),
        ("\\boxed{90^\\circ}", "90", "text", "90^\\circ", True),
    ],
)
def test_grade(text: str, ref: str, kind: str, extracted: str | None, correct: bool) -> None:
    assert grade(text, ref, kind) == (extracted, correct)


def test_no_reference_means_not_graded() -> None:
    assert grade("\\boxed{5}", None, "number") == ("5", None)
    assert grade("\\boxed{5}", "5", "") == ("5", None)


def test_nested_braces_and_unbalanced() -> None:
    assert last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{12") is None
    assert extract_answer("\\boxed{12 and then 7", "number") == "7"


@pytest.mark.parametrize(
    ("s", "out"),
    [
        ("1,000", "1000"),
        ("72.0", "72"),
        ("$5$", "5"),
        ("+4", "4"),
        ("3/6", "1/2"),
        ("50\\%", "50"),
        ("2.5", "5/2"),
        ("1/0", None),
        ("abc", None),
        ("1,00", None),
        ("-0.0", "0"),
    ],
)
def test_normalize_number(s: str, out: str | None) -> None:
    assert normalize_number(s) == out
