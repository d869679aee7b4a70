"""The output model: the `$...$` protocol, tiers, reference answers, seeded plans and their text."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rllmtop.sim.outputs import (
    THINK_END_ID,
    OutputModel,
    RequestFactory,
    TierModel,
    analyze_prompt,
    evaluate_expression,
    make_plan,
    piece_text,
    request_key,
    tokenize,
)


def text_of(ids: list[int]) -> str:
    return "".join(piece_text(i) for i in ids)


@pytest.mark.parametrize(
    ("expr", "value", "ops"),
    [
        ("2+3", 5, 1),
        ("(24*7) - 95", 73, 2),
        ("2^10", 1024, 1),
        ("17 mod 5", 2, 1),
        ("2^3^2", 512, 2),  # right-associative power
        ("3 - 10", -7, 1),
        ("((1+2)*(3+4)) mod 6", 3, 4),
        ("7", 7, 0),
    ],
)
def test_expression_grammar(expr: str, value: int, ops: int) -> None:
    assert evaluate_expression(expr) == (value, ops)


@pytest.mark.parametrize(
    "expr",
    ["2^100000", "10 mod 0", "__import__('os')", "1/2", "-3", "a+1", "", "2**3", "(1+2", "9^9^9", "1.5+2"],
)
def test_expression_refused(expr: str) -> None:
    assert evaluate_expression(expr) is None


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> tuple[str, int, int]:
    """(text, value, binary operators) of a random expression in the grammar."""
    if depth >= 3 or draw(st.booleans()):
        n = draw(st.integers(0, 50))
        return str(n), n, 0
    left = draw(expressions(depth + 1))
    right = draw(expressions(depth + 1))
    op = draw(st.sampled_from(["+", "-", "*", "mod", "^"]))
    a, b = left[1], right[1]
    if (op == "mod" and b == 0) or (op == "^" and not (0 <= b <= 4 and abs(a) <= 50)):
        op = "+"
    value = {"+": a + b, "-": a - b, "*": a * b, "mod": a % b if b else 0, "^": a**b if op == "^" else 0}[op]
    return f"({left[0]} {op} {right[0]})", value, left[2] + right[2] + 1


@settings(max_examples=300, deadline=None)
@given(expressions())
def test_expression_matches_reference(case: tuple[str, int, int]) -> None:
    text, value, ops = case
    assert evaluate_expression(text) == (value, ops)


def test_tiers_by_operator_count() -> None:
    def tier(n_ops: int) -> str:
        return analyze_prompt("Compute $" + "+".join(str(i) for i in range(n_ops + 1)) + "$.").tier

    assert [tier(n) for n in range(1, 10)] == ["easy"] * 3 + ["medium"] * 3 + ["hard"] * 3
    info = analyze_prompt("A warehouse has crates. How many remain? Compute $(24*7) - 95$.")
    assert (info.tier, info.value, info.reference) == ("easy", 73, "73")


def test_multiple_choice_reference_is_the_matching_letter() -> None:
    prompt = "Which value is $3^2 mod 5$?\n(A) 9\n(B) 3\n(C) 4\n(D) 1\nAnswer with the letter."
    info = analyze_prompt(prompt)
    assert (info.tier, info.reference) == ("mcq", "C")
    assert [v for _, v in info.options] == [9, 3, 4, 1]


def test_prompt_without_expression_gets_an_estimated_tier_and_a_stable_reference() -> None:
    a = analyze_prompt("Tell me about the history of the printing press.")
    b = analyze_prompt("Tell me about the history of the printing press.")
    assert a == b
    assert a.expression is None and a.reference.isdigit()
    assert (a.tier, a.tier_source) == ("easy", "estimate")  # no mathematics: not a random tier
    # a bare number between dollar signs is not a protocol expression
    assert analyze_prompt("What is $25$ plus $7$?").tier_source == "estimate"


def test_declared_difficulty_wins() -> None:
    easy_expr = "Compute $(24*7) - 95$."
    assert analyze_prompt(easy_expr, "hard").tier == "hard"
    assert analyze_prompt(easy_expr, "hard").reference == "73"
    assert analyze_prompt(easy_expr, "nonsense").tier == "easy"  # unknown values are ignored
    mcq = analyze_prompt(easy_expr, "mcq")
    assert mcq.tier == "mcq" and mcq.reference in "ABCD" and mcq.tier_source == "declared"
    free = analyze_prompt("Tell me about the printing press.", "medium")
    assert (free.tier, free.tier_source) == ("medium", "declared")


TM = TierModel(
    reasoning_median=800,
    reasoning_sigma=0.7,
    answer_median=120,
    answer_sigma=0.4,
    accuracy=0.8,
    accuracy_no_thinking=0.3,
    answer_median_no_thinking=200,
)


def test_plan_is_deterministic_in_its_key() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    a = make_plan(info, TM, key=123, thinking=True, max_tokens=30000)
    b = make_plan(info, TM, key=123, thinking=True, max_tokens=30000)
    c = make_plan(info, TM, key=124, thinking=True, max_tokens=30000)
    assert a == b
    assert a.token_ids != c.token_ids


def test_plan_structure_and_answer_text() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    for key in range(50):
        p = make_plan(info, TM, key=key, thinking=True, max_tokens=30000)
        assert p.finish_reason == "stop"
        assert p.token_ids[p.reasoning_tokens] == THINK_END_ID
        assert p.answer_start == p.reasoning_tokens + 1
        answer = text_of(p.token_ids[p.answer_start :])
        assert answer.endswith(f"\\boxed{{{p.answer}}}.")
        assert (p.answer == "73") == p.correct
        assert THINK_END_ID not in p.token_ids[: p.reasoning_tokens]


def test_max_tokens_cuts_the_plan() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    p = make_plan(info, TM, key=1, thinking=True, max_tokens=50)
    assert p.n_tokens == 50 and p.reasoning_tokens == 50
    assert p.finish_reason == "length" and not p.correct
    q = make_plan(info, TM, key=1, thinking=True, max_tokens=p.planned_reasoning + 5)
    assert q.finish_reason == "length" and q.n_tokens == p.planned_reasoning + 5
    assert q.reasoning_tokens == p.planned_reasoning


def test_runaway_requests_reason_until_max_tokens() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    plans = [
        make_plan(info, TM, key=k, thinking=True, max_tokens=20000, runaway_probability=1.0) for k in range(5)
    ]
    assert all(p.reasoning_tokens == 20000 and p.finish_reason == "length" for p in plans)


def test_accuracy_is_the_tier_accuracy() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    n = 3000
    correct = sum(make_plan(info, TM, key=k, thinking=True, max_tokens=10**6).correct for k in range(n))
    # binomial: mean 0.8, sd sqrt(0.16/3000) ~ 0.0073; 5 sd bounds
    assert abs(correct / n - 0.8) < 0.037
    no_think = sum(make_plan(info, TM, key=k, thinking=False, max_tokens=10**6).correct for k in range(n))
    assert abs(no_think / n - 0.3) < 0.045


def test_reasoning_lengths_are_lognormal() -> None:
    tm = TierModel(2000, 0.8, 100, 0.3, 1.0, 1.0, 100)
    info = analyze_prompt("Compute $1+2$.")
    logs = [
        math.log(make_plan(info, tm, key=k, thinking=True, max_tokens=10**7).planned_reasoning)
        for k in range(2000)
    ]
    res = stats.kstest(logs, "norm", args=(math.log(2000), 0.8))
    assert res.pvalue > 0.001


def test_wrong_answers_reason_longer() -> None:
    tm = TierModel(2000, 0.5, 100, 0.3, 0.5, 0.5, 100)
    info = analyze_prompt("Compute $1+2$.")
    plans = [
        make_plan(info, tm, key=k, thinking=True, max_tokens=10**7, wrong_length_factor=2.0)
        for k in range(2000)
    ]
    right = [p.planned_reasoning for p in plans if p.correct]
    wrong = [p.planned_reasoning for p in plans if not p.correct]
    assert sum(wrong) / len(wrong) > 1.6 * sum(right) / len(right)


def test_no_thinking_means_no_reasoning() -> None:
    info = analyze_prompt("Compute $(24*7) - 95$.")
    p = make_plan(info, TM, key=5, thinking=False, max_tokens=30000)
    assert p.reasoning_tokens == 0 and not p.thinking and p.answer_start == 0
    assert THINK_END_ID not in p.token_ids
    assert text_of(p.token_ids).endswith(f"\\boxed{{{p.answer}}}.")


def test_multiple_choice_answers_with_a_letter() -> None:
    prompt = "Which value is $3^2 mod 5$?\n(A) 9\n(B) 3\n(C) 4\n(D) 1"
    info = analyze_prompt(prompt)
    letters = set()
    for k in range(200):
        p = make_plan(info, TM, key=k, thinking=True, max_tokens=10**6)
        assert p.answer in "ABCD" and (p.answer == "C") == p.correct
        letters.add(p.answer)
    assert letters == set("ABCD")


def test_factory_seeds_and_occurrences() -> None:
    model = OutputModel({t: TM for t in ("easy", "medium", "hard", "mcq")})
    f1, f2 = RequestFactory(model, seed=7), RequestFactory(model, seed=7)
    prompt = "Compute $(24*7) - 95$."
    # with a request seed: the same plan whatever else was asked before
    f1.plan("something else", max_tokens=1000)
    assert f1.plan(prompt, max_tokens=30000, request_seed=11) == f2.plan(
        prompt, max_tokens=30000, request_seed=11
    )
    # without one: the n-th occurrence of a prompt gets its own draw, reproducibly
    a = [f1.plan(prompt, max_tokens=30000).token_ids for _ in range(3)]
    b = [f2.plan(prompt, max_tokens=30000).token_ids for _ in range(3)]
    assert a == b and a[0] != a[1]
    other = RequestFactory(model, seed=8).plan(prompt, max_tokens=30000, request_seed=11)
    assert other != f1.plan(prompt, max_tokens=30000, request_seed=11)


def test_request_key_and_tokenizer_are_stable() -> None:
    # fixed values (no per-process hash seed): a change here changes every recorded token count
    assert request_key(0, 1, "p", 0, "think") == 12998275138101579045
    assert request_key(0, 1, "p", 0, "think") != request_key(0, 1, "p", 0, "nothink")
    ids = tokenize("A warehouse ships 24 crates.")
    assert ids == [16475, 82988, 94641, 37277, 84437, 20008, 37359, 135578]
    rng = random.Random(0)
    text = " ".join(str(rng.random()) for _ in range(50))
    assert len(tokenize(text)) > 50


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), cut=st.integers(0, 300), scale=st.floats(0.1, 10.0))
def test_a_scaled_tokenizer_counts_floor_n_scale_and_keeps_prefixes(
    text: str, cut: int, scale: float
) -> None:
    # a calibrated profile's prompt_token_scale: N stand-in tokens become floor(N * scale) tokens, and the
    # prefix of a text still tokenizes to a prefix of the text's ids (the prefix cache's blocks hold)
    n = len(tokenize(text))
    ids = tokenize(text, scale)
    assert len(ids) == math.floor(n * scale)
    prefix = text[:cut]
    if tokenize(prefix) == tokenize(text)[: len(tokenize(prefix))]:  # a cut inside a piece changes that piece
        assert ids[: len(tokenize(prefix, scale))] == tokenize(prefix, scale)
    assert tokenize(text, 1.0) == tokenize(text)
    assert all(0 <= i < 151_000 for i in ids)
