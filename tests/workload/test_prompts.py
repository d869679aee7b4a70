"""Built-in generated prompt sets, dataset loading with column mappings, and the class mix."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import BUILTIN_PROMPT_SETS, PromptSource, RequestClass, load_scenario
from rllmtop.workload.prompts import (
    PromptMix,
    count_operators,
    generate_set,
    load_prompt_source,
    load_scenario_prompts,
)

_EXPR = re.compile(r"\$([^$]+)\$")


def _eval(expr: str) -> int:
    """An independent evaluator of the protocol's grammar (mod = remainder, ^ = power)."""
    tree = ast.parse(re.sub(r"\bmod\b", "%", expr).replace("^", "**"), mode="eval")

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and type(n.value) is int and n.value >= 0:
            return n.value
        assert isinstance(n, ast.BinOp), ast.dump(n)
        a, b = ev(n.left), ev(n.right)
        assert a >= 0 and b >= 0, "every intermediate value is non-negative"
        ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
        if isinstance(n.op, ast.Mod):
            assert b > 0
            return a % b
        if isinstance(n.op, ast.Pow):
            assert b <= 3
            return int(a**b)
        return ops[type(n.op)]

    return ev(tree.body)


@pytest.mark.parametrize("name", BUILTIN_PROMPT_SETS)
def test_generated_sets_follow_the_protocol(name: str) -> None:
    items = generate_set(name, 300, seed=0)
    assert len(items) == 300 and len({i.id for i in items}) == 300
    tiers = {"math-easy": (1, 3), "math-medium": (4, 6), "math-hard": (7, 99), "mcq": (1, 99)}
    lo, hi = tiers[name]
    for it in items:
        exprs = _EXPR.findall(it.text)
        assert len(exprs) == 1 and it.text.count("$") == 2, it.text
        expr = exprs[0]
        k = count_operators(expr)
        assert lo <= k <= hi, (k, expr)
        value = _eval(expr)
        assert 0 <= value <= 1_000_000
        assert "\\boxed{}" in it.text
        if name == "mcq":
            opts = re.findall(r"^\(([A-D])\) (\d+)$", it.text, re.MULTILINE)
            assert [o[0] for o in opts] == ["A", "B", "C", "D"]
            assert len({o[1] for o in opts}) == 4
            assert dict(opts)[it.reference or ""] == str(value)
            assert (it.kind, it.difficulty) == ("choice", "mcq")
        else:
            assert it.reference == str(value) and it.kind == "number"
            assert "(A)" not in it.text
    ops_seen = Counter(op for it in items for op in ("^", "mod", "*", "+", "-") if op in it.text)
    if name in ("math-medium", "math-hard"):
        assert ops_seen["^"] > 0 and ops_seen["mod"] > 0


def test_generated_sets_agree_with_the_simulator() -> None:
    """The sim evaluates the same expression and infers the same tier (the shared protocol)."""
    outputs = pytest.importorskip("rllmtop.sim.outputs")
    tier = {"math-easy": "easy", "math-medium": "medium", "math-hard": "hard", "mcq": "mcq"}
    for name in BUILTIN_PROMPT_SETS:
        for it in generate_set(name, 200, seed=3):
            info = outputs.analyze_prompt(it.text)
            assert info.tier == tier[name] == it.difficulty, it.text
            assert info.reference == it.reference, it.text


def test_generated_sets_are_seeded() -> None:
    a = generate_set("math-medium", 50, seed=1)
    assert a == generate_set("math-medium", 50, seed=1)
    assert a != generate_set("math-medium", 50, seed=2)
    assert [i.id for i in a][:2] == ["math-medium-0000", "math-medium-0001"]
    assert len(load_prompt_source(PromptSource(builtin="mcq", limit=7), None, 0)) == 7


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    rows = [
        {"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = 24.\n#### 72"},
        {"question": "Weng earns $12 an hour...", "answer": "12/60 = 0.2\n#### 1,000"},
    ]
    p = tmp_path / "gsm8k_test.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_prompt_source(PromptSource(file=p.name, answer_format="gsm8k", difficulty="easy"), tmp_path)
    assert [i.reference for i in items] == ["72", "1,000"]
    assert items[0].kind == "number" and items[0].difficulty == "easy"
    assert items[0].id == "gsm8k_test-00000"
    assert items[0].text.startswith("Natalia sold 48 clips...") and "\\boxed{}" in items[0].text


def test_math500_jsonl_with_latex_answers(tmp_path: Path) -> None:
    rows = [
        {
            "problem": "Compute $\\frac{14}{3}$.",
            "answer": "\\frac{14}{3}",
            "unique_id": "test/algebra/1.json",
        },
        {"problem": "Find x.", "answer": "(3, \\frac{\\pi}{2})", "unique_id": "test/precalculus/807.json"},
    ]
    p = tmp_path / "math500.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    src = PromptSource(file=str(p), question="problem", answer="answer", id="unique_id", difficulty="medium")
    items = load_prompt_source(src)
    assert items[0].id == "test/algebra/1.json"
    assert (items[0].reference, items[0].kind) == ("\\frac{14}{3}", "number")
    assert items[1].kind == "text"


def test_aime_csv_and_template(tmp_path: Path) -> None:
    p = tmp_path / "aime_2024.csv"
    p.write_text('ID,Problem,Answer\n2024-I-1,"Every morning Aya walks 9 km, ...",204\n')
    src = PromptSource(
        file=str(p),
        question="Problem",
        answer="Answer",
        id="ID",
        template="Problem: {question}\nAnswer in \\boxed{{}}.",
    )
    (it,) = load_prompt_source(src)
    assert it.text == "Problem: Every morning Aya walks 9 km, ...\nAnswer in \\boxed{}."
    assert (it.id, it.reference, it.kind) == ("2024-I-1", "204", "number")


def test_gpqa_csv_with_distractors_shuffled_by_seed(tmp_path: Path) -> None:
    p = tmp_path / "gpqa_diamond.csv"
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    body = "".join(f"rec{i},Which particle {i}?,right{i},w1-{i},w2-{i},w3-{i}\n" for i in range(40))
    p.write_text(header + body)
    src = PromptSource(
        file=str(p),
        question="Question",
        answer="Correct Answer",
        id="Record ID",
        distractors=("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
    )
    items = load_prompt_source(src, seed=0)
    letters = Counter()
    for i, it in enumerate(items):
        assert it.kind == "choice"
        opts = dict(re.findall(r"^\(([A-D])\) (.+)$", it.text, re.MULTILINE))
        assert opts[it.reference or ""] == f"right{i}"
        letters[it.reference] += 1
    assert len(letters) == 4  # the correct answer is not always (A)
    assert load_prompt_source(src, seed=0) == items
    assert load_prompt_source(src, seed=1) != items


def test_choices_list_column_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"q": ["2+2?", "3+3?"], "options": [["3", "4"], ["6", "7"]], "label": ["1", "A"]})
    p = tmp_path / "mc.parquet"
    pq.write_table(table, p)
    items = load_prompt_source(
        PromptSource(file=str(p), format="parquet", question="q", answer="label", choices="options")
    )
    assert [i.reference for i in items] == ["B", "A"]
    assert "(A) 3\n(B) 4" in items[0].text


def test_unanswered_dataset_is_not_graded(tmp_path: Path) -> None:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps({"data": [{"prompt": "hello"}]}))
    (it,) = load_prompt_source(PromptSource(file=str(p), question="prompt", answer=None))
    assert it.reference is None and it.kind == ""


def test_dataset_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n{"question": \n')
    with pytest.raises(UserError) as ei:
        load_prompt_source(PromptSource(file=str(p)))
    assert "line 2" in ei.value.what and "not JSON" in ei.value.what
    p.write_text('{"problem": "a", "answer": "1"}\n')
    with pytest.raises(UserError) as ei:
        load_prompt_source(PromptSource(file=str(p)))
    assert "no column 'question'" in ei.value.what and "problem" in ei.value.what
    assert "prompts.question" in ei.value.hint
    p.write_text("")
    with pytest.raises(UserError) as ei:
        load_prompt_source(PromptSource(file=str(p)))
    assert "no rows" in ei.value.what


def test_mix_weights_and_no_repeats_within_a_pass() -> None:
    classes = [
        RequestClass("a", PromptSource(builtin="math-easy"), weight=3.0),
        RequestClass("b", PromptSource(builtin="mcq"), weight=1.0),
    ]
    items = [list(generate_set("math-easy", 100, 0)), list(generate_set("mcq", 1000, 0))]
    picks = PromptMix(classes, items, seed=4).draw(4000)
    share = sum(1 for c, _ in picks if c == 0) / len(picks)
    assert abs(share - 0.75) < 0.03
    a_ids = [it.id for c, it in picks if c == 0]
    assert len(set(a_ids[:100])) == 100  # every item once before any repeats
    assert PromptMix(classes, items, seed=4).draw(4000) == picks
    assert PromptMix(classes, items, seed=5).draw(50) != picks[:50]


def test_scenario_prompts_load_per_class() -> None:
    sc = load_scenario("default")
    per_class = load_scenario_prompts(sc)
    assert [p[0].difficulty for p in per_class] == ["easy", "medium", "hard", "mcq"]
