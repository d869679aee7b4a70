"""Difficulty of prompts the simulator did not generate: the declared header, else the estimator.

The example questions below are written for these tests in the style of each dataset (none is taken
from a dataset): grade-school word problems (GSM8K-like), short problems with notation (MATH-500-like)
and competition problems (AIME-like), plus multiple-choice items.
"""

from __future__ import annotations

import statistics

import httpx
import pytest

from rllmtop.sim.difficulty import estimate_difficulty, option_letters
from rllmtop.sim.outputs import RequestFactory, analyze_prompt
from rllmtop.sim.profiles import load_profile
from rllmtop.sim.server import serve_in_background

from .conftest import chat_body, options

GSM8K_STYLE = [
    "Maria buys 3 packs of pencils with 12 pencils in each pack. She gives 8 pencils to her brother. "
    "How many pencils does she have left?",
    "A train travels at 60 miles per hour for 2.5 hours and then at 45 miles per hour for 2 hours. "
    "How many miles does it travel in total?",
    "Sam earns $15 per hour and works 6 hours a day for 5 days. He spends $120 on groceries. "
    "How much money does he have left?",
    "A garden has 4 rows of tomato plants with 9 plants in each row. Each plant gives 6 tomatoes. "
    "If 20 tomatoes spoil, how many good tomatoes are there?",
    "Lena reads 25 pages on Monday and twice as many on Tuesday. On Wednesday she reads 10 fewer pages "
    "than on Tuesday. How many pages did she read over the three days?",
    "A school orders 18 boxes of markers with 24 markers in each box. The markers are shared equally "
    "among 12 classrooms. How many markers does each classroom get?",
    "Tickets to the fair cost $5, $8 and $12 for children, students and adults. A family buys 2 "
    "children's tickets, 1 student ticket and 2 adult tickets. How much do they pay?",
    "Jonah's bakery sold 140 muffins on Saturday, which was 35 more than on Friday. On Sunday it sold "
    "half as many as on Friday and Saturday together. A muffin costs $2. The bakery pays $50 a day for "
    "the stall. Over the three days, how much money did the bakery make after paying for the stall, "
    "if every muffin it baked was sold and no muffin was given away for free during the weekend market?",
]
MATH_STYLE = [
    "What is the value of $\\frac{2}{3} + \\frac{5}{12}$? Express your answer as a common fraction.",
    "If $g(x) = 2x^2 - 3x + 1$, what is $g(3)$?",
    "Simplify $\\sqrt{72} \\cdot \\sqrt{8}$.",
    "How many vertical asymptotes does the graph of $y=\\frac{x+1}{x^2-9}$ have?",
    "What is the smallest positive integer $n$ such that $3n \\equiv 5 \\pmod{7}$?",
    "The sum of two numbers is $25$ and their difference is $7$. What is the larger number?",
    "Find the distance between the points $(1, -2)$ and $(4, 2)$.",
    "Solve for $x$: $\\log_2 (x+3) = 5$.",
]
AIME_STYLE = [
    "Let $m$ and $n$ be relatively prime positive integers such that the probability that a randomly "
    "chosen divisor of $12^{6}$ is a perfect square equals $\\frac{m}{n}$. Find $m+n$.",
    "Find the number of ordered pairs $(a,b)$ of positive integers with $a \\le b$ such that "
    "$\\operatorname{lcm}(a,b) = 3600$.",
    "Find the remainder when $\\sum_{k=1}^{200} k^3 \\cdot 2^k$ is divided by $1000$.",
    "A convex hexagon $ABCDEF$ has all sides of length $2$ and $\\angle A = \\angle C = \\angle E = "
    "120^\\circ$. Its area can be written as $p\\sqrt{q}$, where $p$ and $q$ are positive integers and "
    "$q$ is not divisible by the square of any prime. Find $p+q$.",
    "There is a unique increasing sequence of positive integers $a_1 < a_2 < \\dots < a_{10}$ such "
    "that $a_{k+1} - a_k$ is a power of $2$ for each $k$ and $a_{10} = 2024$. Find the sum of all "
    "possible values of $a_1$.",
    "Prove that for every positive integer $n$, the number $n^5 - n$ is divisible by $30$.",
    "Find the least positive integer $N$ such that $N$ leaves remainder $3$ when divided by $7$ and "
    "the number of lattice points strictly inside the circle $x^2+y^2=N$ is a multiple of $4$.",
]
MCQ_STYLE = [
    "Which particle mediates the electromagnetic force?\n(A) Gluon\n(B) Photon\n(C) W boson\n(D) Graviton",
    "What is the main product of photosynthesis?\nA) Oxygen only\nB) Glucose\nC) Nitrogen\nD) Methane",
    "Which value of $x$ solves $2x+3=11$? (A) 3 (B) 4 (C) 5 (D) 7",
]


@pytest.mark.parametrize(
    ("questions", "tier"),
    [(GSM8K_STYLE, "easy"), (MATH_STYLE, "medium"), (AIME_STYLE, "hard"), (MCQ_STYLE, "mcq")],
)
def test_estimator_tiers_by_style(questions: list[str], tier: str) -> None:
    tiers = [estimate_difficulty(q).tier for q in questions]
    # the rule is a heuristic: every style gets its tier for most of its items, no item is two tiers off
    assert sum(t == tier for t in tiers) >= len(questions) - 1, tiers
    if tier == "mcq":
        assert all(t == "mcq" for t in tiers)
    for q in questions:
        info = analyze_prompt(q)
        assert info.tier_source == "estimate" and info.tier == estimate_difficulty(q).tier


def test_estimator_features() -> None:
    e = estimate_difficulty(AIME_STYLE[0])
    # \frac, ^ and five math spans ($m$, $n$, $12^{6}$, $\frac{m}{n}$, $m+n$): 2 points, + 3 phrases
    assert e.latex_markers == 7 and e.phrases == ("relatively prime", "positive integers", "find m+n")
    assert e.points == 5 and e.tier == "hard"
    # currency is not mathematics
    assert (
        estimate_difficulty("Tickets cost $5, $8 and $12 for kids, students and adults.").latex_markers == 0
    )
    assert estimate_difficulty("What is $25$ plus $7$?").latex_markers == 2
    long_plain = " ".join(["The farmer walks to the market and back."] * 20)
    assert estimate_difficulty(long_plain).tier == "easy"  # length alone does not make it harder
    assert option_letters("(A) x\n(C) y") == ()  # not in order from A
    assert option_letters("pick one\n(A) x\n(B) y") == ("A", "B")
    mcq = analyze_prompt(MCQ_STYLE[1])
    assert mcq.tier == "mcq" and mcq.reference in "ABCD"


def test_estimator_is_total_on_odd_text() -> None:
    import random

    rng = random.Random(5)
    alphabet = "ab $\\^_{}()\n.:ABCD0123+ find the number of prove"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        e = estimate_difficulty(text)
        assert e.tier in ("easy", "medium", "hard", "mcq") and e.points >= 0


def test_study_ordering_of_reasoning_lengths() -> None:
    """GSM8K-style short, MATH-style longer, AIME-style longest (mean reasoning tokens, 40 draws each,
    max_tokens 32768 as the default profile's context)."""
    prof = load_profile("rllm-7b")
    factory = RequestFactory(prof.outputs, seed=3)
    mean = {}
    for name, questions in (("gsm8k", GSM8K_STYLE), ("math", MATH_STYLE), ("aime", AIME_STYLE)):
        lengths = [
            factory.plan(q, max_tokens=32768, request_seed=k).reasoning_tokens
            for q in questions
            for k in range(40)
        ]
        mean[name] = statistics.mean(lengths)
    assert mean["gsm8k"] < mean["math"] < mean["aime"], mean
    assert mean["aime"] > 2 * mean["math"] > 4 * mean["gsm8k"], mean


async def test_gsm8k_question_answers_within_4000_tokens() -> None:
    """The report of issue 10.6: a GSM8K question with max_tokens 4000 reasoned past 4,000 tokens and
    never answered (its tier came from a hash). Estimated easy now: nearly all answer in time."""
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:
        finishes = []
        for k in range(20):
            r = await c.post(
                url + "/v1/chat/completions", json=chat_body(GSM8K_STYLE[0], max_tokens=4000, seed=k)
            )
            assert r.status_code == 200
            finishes.append(r.json()["choices"][0]["finish_reason"])
        # easy: median 650 reasoning tokens, 2% runaways; 4000 is > 2.5 sigma above the median
        assert finishes.count("stop") >= 17, finishes


async def test_declared_difficulty_header() -> None:
    """x-rllmtop-difficulty sets the tier (unknown values ignored), visible in the reasoning length."""
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:

        async def reasoning(header: str | None, seed: int) -> int:
            headers = {"x-rllmtop-difficulty": header} if header is not None else {}
            r = await c.post(
                url + "/v1/chat/completions",
                json=chat_body(GSM8K_STYLE[1], max_tokens=3000, seed=seed),
                headers=headers,
            )
            assert r.status_code == 200
            return int(r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"])

        seeds = range(8)
        plain = [await reasoning(None, k) for k in seeds]
        hard = [await reasoning("HARD", k) for k in seeds]
        bogus = [await reasoning("impossible", k) for k in seeds]
        assert bogus == plain  # ignored
        # easy median 650, hard 9000 (cut at max_tokens 3000); the same seeds draw the same normal
        # deviates, so every hard request reasons at least as long as its easy twin
        assert all(h >= p for h, p in zip(hard, plain, strict=True)), (hard, plain)
        assert statistics.mean(hard) > 1.5 * statistics.mean(plain), (hard, plain)
