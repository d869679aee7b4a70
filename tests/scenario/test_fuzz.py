"""A seeded fuzzer of scenario files: hostile TOML as a careless user or a generator would write it.

Each case starts from a valid scenario, applies a few mutations (deep nesting, huge strings, wrong types,
nan/inf and huge numbers, unknown keys, odd unicode, newlines, huge matrices, broken syntax, hostile
overrides), writes the file and loads it. Whatever the input, ``load_scenario`` returns a Scenario (whose
every matrix cell then builds) or raises :class:`UserError` whose message is one line naming the file,
with a one-line hint, and never shows a secret; and every case finishes within a time bound.
The fast suite runs a few hundred cases; ``-m slow`` runs thousands more.
"""

from __future__ import annotations

import math
import random
import time
import tomllib
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import Scenario, load_scenario, matrix_cells, scenario_dirs

SECRET = "sk-FUZZsecret0123456789"
CASE_SECONDS = 1.5  # "under ~1 s" with a margin for a loaded 2-core machine; typical cases take milliseconds
FAST_CASES = 300
SLOW_CASES = 3000


class Lit(str):
    """Text inserted into the TOML as is (deep nesting is built as text: no recursion on our side)."""


def _shipped_docs() -> list[dict[str, object]]:
    docs = []
    for d in scenario_dirs()[:1]:
        for p in sorted(d.glob("*.toml")):
            raw = tomllib.loads(p.read_text())
            if raw.get("arrival", {}).get("process") == "trace":  # type: ignore[union-attr]
                raw["arrival"]["trace_file"] = str(p.parent / raw["arrival"]["trace_file"])  # type: ignore[index]
            docs.append(raw)
    return docs


EXTRA_DOCS: list[dict[str, object]] = [
    {
        "engine": {
            "kind": "url",
            "urls": ["http://a:1", "http://b:2"],
            "balance": "least_in_flight",
            "prometheus": {"url": "http://p:9090", "selector": '{job="vllm"}'},
        },
        "load": {"num_prompts": 20, "workers": "auto", "ray": "local", "ignore_eos": True},
        "arrival": {"ramp_up_strategy": "linear", "ramp_up_start_rate": 1.0, "ramp_up_end_rate": 4.0},
        "classes": [
            {
                "name": "c",
                "prompts": "mcq",
                "reasoning_effort": "low",
                "reasoning_budget": 64,
                "chat_template_kwargs": {"a": [1, "b"]},
                "conversation": {"turns": 2, "think_time": 1.0},
            }
        ],
        "slo": {"ttfvt_p99": 3.0, "goodput": {"ttfvt": 30.0}},
        "matrix": {"classes.temperature": [0.1, 0.9], "engine.balance": ["round_robin", "least_in_flight"]},
    },
    {
        "engine": {"replicas": 3, "balance": "round_robin", "faults": {"error_rate": 0.1}},
        "arrival": {
            "process": "phases",
            "repeat_phases": True,
            "phases": [{"duration": 5.0, "rate": 2.0}, {"duration": 3.0, "rate": 0.0, "process": "constant"}],
        },
        "load": {"duration": 30.0, "max_concurrency": 8},
        "classes": [
            {"prompts": {"builtin": "math-hard", "limit": 50}, "max_tokens": 100, "weight": 2.0},
            {"name": "b", "prompts": "math-easy", "thinking": False, "difficulty": "easy"},
        ],
    },
]

WORDS = [
    "engine",
    "arrival",
    "load",
    "classes",
    "slo",
    "matrix",
    "rate",
    "burstiness",
    "process",
    "kind",
    "url",
    "urls",
    "endpoints",
    "replicas",
    "balance",
    "prometheus",
    "workers",
    "ray",
    "name",
    "prompts",
    "max_tokens",
    "weight",
    "goodput",
    "phases",
    "duration",
    "num_prompts",
    "seed",
    "model",
    "api_key",
    "HF_TOKEN",
    "token",
    "TOKENIZERS_PARALLELISM",
    "trace_format",
    "time_scale",
    "conversation",
    "turns",
    "ramp_up_strategy",
    "burst_size",
    "limit",
    "template",
    "env",
    "args",
    "selector",
    "difficulty",
]
ODD_TEXT = [
    "\n",
    "\r\n",
    "\t",
    "\u2028",
    "\u2029",
    "\x85",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x1b[31m",
    '"',
    "\\",
    "'",
    "é",
    "𝕏",
    "🦙",
    "{question}",
    "{question:d}",
    "{0}",
    "$(rm -rf /)",
    " ",
    "",
    "http://user:pw@h:1",
    SECRET,
    "a-" * 200,
]
NUMBERS: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    5e-324,
    0,
    -1,
    0.0,
    -0.0,
    1,
    2**63 - 1,
    -(2**63),
    1e9,
    1e300,
    0.5,
    3,
    1e6,
    1e-9,
    256,
    257,
    1_000_001,
]


def _toml_key(k: str) -> str:
    if k and all((c.isalnum() and c.isascii()) or c in "_-" for c in k):
        return k
    return _toml_str(k)


_ESCAPE = {**{i: f"\\u{i:04x}" for i in range(0x20)}, 0x7F: "\\u007f", ord("\\"): "\\\\", ord('"'): '\\"'}


def _toml_str(s: str) -> str:
    return '"' + s.translate(_ESCAPE) + '"'


def to_toml(v: object, depth: int = 0) -> str:
    """An inline TOML literal (dates excluded); ``Lit`` values are pasted as they are."""
    if isinstance(v, Lit):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(max(min(v, 2**63 - 1), -(2**63)))
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(to_toml(x, depth + 1) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {to_toml(x, depth + 1)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def document(raw: dict[str, object]) -> str:
    return "".join(f"{_toml_key(k)} = {to_toml(v)}\n" for k, v in raw.items())


def _random_value(rng: random.Random, depth: int = 0) -> object:
    r = rng.random()
    if r < 0.25:
        return rng.choice(NUMBERS)
    if r < 0.5:
        return rng.choice(ODD_TEXT) * rng.choice([1, 1, 2, 50])
    if r < 0.6:
        return rng.choice([True, False])
    if r < 0.7:
        return rng.choice(WORDS)
    if r < 0.85 and depth < 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3:
        return {rng.choice(WORDS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.randint(-5, 5)


def _deep(rng: random.Random) -> Lit:
    d = rng.choice([17, 50, 300, 1000, 3000])
    kind = rng.randrange(3)
    if kind == 0:
        return Lit("[" * d + "1" + "]" * d)
    if kind == 1:
        return Lit("{a = " * d + "1" + "}" * d)
    return Lit("[" * d + "{x = 1}" + "]" * d)


def _huge(rng: random.Random) -> str:
    n = rng.choice([5_000, 70_000, 300_000])
    return rng.choice(["a", "a-", "é", "\n", SECRET, "{question}"]) * (n // 2)


def _containers(v: object, out: list[object]) -> None:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict | list) and not isinstance(x, Lit):
            out.append(x)
            stack.extend(x.values() if isinstance(x, dict) else x)


def mutate(rng: random.Random, raw: dict[str, object]) -> None:
    found: list[object] = []
    _containers(raw, found)
    target = rng.choice(found)
    m = rng.randrange(11)
    if isinstance(target, dict):
        keys = list(target)
        key = rng.choice(keys) if keys and rng.random() < 0.7 else rng.choice(WORDS)
        if m == 0:
            target[key] = _deep(rng)
        elif m == 1:
            target[key] = _huge(rng)
        elif m == 2:
            target[key] = rng.choice(NUMBERS)
        elif m == 3:
            target.pop(key, None)
        elif m == 4:
            target[key + rng.choice(["x", "_", "s", ""]) + rng.choice(WORDS)[:2]] = _random_value(rng)
        elif m == 5:
            target[rng.choice(ODD_TEXT) + key] = 1
        elif m == 6:  # a huge or hostile matrix
            n = rng.choice([2, 10, 100, 1000])
            raw["matrix"] = {
                f"classes.temperature{i}"
                if rng.random() < 0.2
                else rng.choice(
                    [
                        "seed",
                        "classes.temperature",
                        "engine.speed",
                        "load.num_prompts",
                        "arrival.rate",
                        "x.y",
                        "profile",
                    ]
                )
                + ("" if i == 0 else str(i) * (rng.random() < 0.3)): [rng.choice(NUMBERS) for _ in range(n)]
                for i in range(rng.randint(1, 4))
            }
        elif m == 7:
            target[key] = rng.choice(ODD_TEXT) * rng.randint(1, 3)
        else:
            target[key] = _random_value(rng)
    else:
        assert isinstance(target, list)
        if m < 3 and target:
            target[rng.randrange(len(target))] = _random_value(rng)
        elif m < 5:
            target.extend([_random_value(rng)] * rng.choice([1, 2, 1100]))
        elif target:
            target.pop(rng.randrange(len(target)))
        else:
            target.append(_deep(rng) if m == 9 else _huge(rng))


VALID: dict[str, list[object]] = {
    "rate": [0.5, 2.0, 40.0],
    "burstiness": [0.3, 1.0, 4.0],
    "max_tokens": [16, 8192, 32768],
    "temperature": [0.0, 1.0, 2.0],
    "weight": [0.0, 0.5, 3.0],
    "num_prompts": [1, 50, 5000],
    "duration": [1.0, 100.0],
    "seed": [0, 7, 2**40],
    "speed": [0.5, 50.0],
    "thinking": [True, False],
    "reasoning_effort": ["low", "high"],
    "difficulty": ["easy", "mcq"],
    "max_concurrency": [1, 64],
    "grace_period": [0.0, 600.0],
    "description": ["", "é 🦙 multi\nline", "x" * 10_000],
    "name": ["a", "run-1.b+c"],
    "profile": ["rllm-7b", "llm-7b"],
}


def valid_edit(rng: random.Random, raw: dict[str, object]) -> None:
    """A change a careful user makes: a known key gets another allowed value."""
    found: list[object] = []
    _containers(raw, found)
    spots = [(d, k) for d in found if isinstance(d, dict) for k in d if k in VALID]
    if spots:
        d, k = rng.choice(spots)
        assert isinstance(d, dict)
        d[k] = rng.choice(VALID[k])


def text_mutation(rng: random.Random, text: str) -> str:
    m = rng.randrange(6)
    if m == 0 and text:
        return text[: rng.randrange(len(text))]  # truncated
    if m == 1:
        lines = text.splitlines(keepends=True)
        return "".join(lines + lines)  # duplicate keys
    if m == 2:
        return "a" + ".a" * rng.choice([20, 5000, 60_000]) + " = 1\n" + text
    if m == 3:
        return "[x]\n" + "".join(f"k{i} = {i}\n" for i in range(rng.choice([100, 1100, 12_000]))) + text
    if m == 4:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(["\x00", "\ufeff", "[[", "]", '"', "\n[\n", "'''", "= ="]) + text[i:]
    return "\ufeff" + text


OVERRIDE_VALUES: dict[str, list[object]] = {
    "request_rate": [math.nan, math.inf, -1.0, 0.0, 1e308, 2.0],
    "burstiness": [math.nan, 0.0, 1e-300, 0.5],
    "max_concurrency": [0, -5, 10**12, 4],
    "num_prompts": [0, 10**9, 10**18, 7],
    "duration": [math.nan, math.inf, 0.0, 1e12, 10.0],
    "seed": [-1, 2**70, 3],
    "model": ["m", "x" * 100_000, "a\nb", SECRET],
    "base_url": ["http://127.0.0.1:1", "http://user:pw@h:1", "not a url", "http://h:99999", "http://h/\n"],
    "speed": [math.nan, 0.0, 1e9, 10.0],
    "profile": ["llm-7b", "\n", "x" * 10_000],
}


def run_case(tmp_path: Path, seed: int, docs: list[dict[str, object]]) -> tuple[str, float]:
    rng = random.Random(seed)
    import copy

    raw = copy.deepcopy(rng.choice(docs))
    careful = rng.random() < 0.25
    for _ in range(rng.randint(1, 4)):
        (valid_edit if careful else mutate)(rng, raw)
    text = document(raw)
    if not careful and rng.random() < 0.2:
        text = text_mutation(rng, text)
    overrides: dict[str, object] = {}
    if not careful and rng.random() < 0.3:
        for k in rng.sample(list(OVERRIDE_VALUES), rng.randint(1, 3)):
            overrides[k] = rng.choice(OVERRIDE_VALUES[k])
    name = f"case-{seed}.toml"
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    t0 = time.perf_counter()
    outcome = "loaded"
    try:
        sc = load_scenario(str(path), overrides)
        assert isinstance(sc, Scenario)
        cells = matrix_cells(sc)
        assert len(cells) == max(1, math.prod(len(v) for v in sc.matrix.values()))
    except UserError as e:
        outcome = "refused"
        for part, label in ((e.what, "what"), (e.hint, "hint")):
            assert len(part.splitlines()) <= 1 and "\n" not in part, (
                f"seed {seed}: {label} breaks lines: {part!r}"
            )
        assert e.hint, f"seed {seed}: no hint: {e.what!r}"
        assert name in e.what, f"seed {seed}: the message does not name the file: {e.what!r}"
        assert SECRET not in str(e), f"seed {seed}: a secret is shown: {e!s}"
        assert len(e.what) < 1000 and len(e.hint) < 1000, f"seed {seed}: message too long"
    except BaseException as e:
        pytest.fail(f"seed {seed}: {type(e).__name__}: {e!s:.300}\n--- file head ---\n{text[:600]!r}")
    elapsed = time.perf_counter() - t0
    assert elapsed < CASE_SECONDS, f"seed {seed}: took {elapsed:.2f} s"
    path.unlink()
    return outcome, elapsed


def _run(tmp_path: Path, seeds: range) -> dict[str, int]:
    docs = _shipped_docs() + EXTRA_DOCS
    outcomes: dict[str, int] = {}
    for s in seeds:
        o, _ = run_case(tmp_path, s, docs)
        outcomes[o] = outcomes.get(o, 0) + 1
    # the generator must produce both kinds, or it tests nothing
    assert outcomes.get("refused", 0) > len(seeds) // 2 and outcomes.get("loaded", 0) > len(seeds) // 50, (
        outcomes
    )
    return outcomes


def test_fuzz_scenario_files(tmp_path: Path) -> None:
    _run(tmp_path, range(FAST_CASES))


@pytest.mark.slow
def test_fuzz_scenario_files_many(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("thousands of cases: run with -m slow")
    _run(tmp_path, range(FAST_CASES, FAST_CASES + SLOW_CASES))


def test_fuzz_documents_are_valid_toml_before_mutation() -> None:
    """The serializer round-trips the base documents, so mutations are what the loader meets."""
    for raw in _shipped_docs() + EXTRA_DOCS:
        assert tomllib.loads(document(raw)) == raw
