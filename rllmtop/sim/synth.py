"""Synthetic workloads for virtual-time runs, tests and the benchmark (independent of rllmtop.workload).

Prompts follow the simulator's protocol: one ``$...$`` expression whose operator count sets the tier,
option lines ``(A) <int>`` .. ``(D) <int>`` for multiple choice. Arrivals follow ``vllm bench serve``:
gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from rllmtop.sim.virtual import Arrival

__all__ = ["gamma_arrivals", "mixed_workload", "synthetic_prompt"]

_OPS_BY_TIER = {"easy": (1, 3), "medium": (4, 6), "hard": (7, 9), "mcq": (2, 5)}
_SETTINGS = (
    "A warehouse ships crates every day.",
    "A farmer plants rows of trees.",
    "A library sorts returned books into boxes.",
    "A robot moves along a grid of tiles.",
    "A bakery packs cookies into trays.",
)


def gamma_arrivals(rate: float, burstiness: float, n: int, seed: int) -> list[float]:
    """``n`` arrival times (seconds, first at 0): gaps ~ Gamma(shape=b, scale=1/(rate*b))."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


def _expression(n_ops: int, rng: random.Random) -> str:
    """A random expression with exactly ``n_ops`` binary operators and bounded values."""
    terms: list[str] = [str(rng.randint(2, 99))]
    ops_left = n_ops
    while ops_left:
        op = rng.choice(("+", "-", "*", "+", "-", "*", "^", "mod"))
        if op == "^" and not terms[-1].isdigit():
            op = "+"
        if op == "^":
            terms[-1] = f"{rng.randint(2, 12)}^{rng.randint(2, 3)}"
        elif op == "mod":
            terms[-1] = f"({terms[-1]} mod {rng.randint(2, 97)})"
        else:
            right = str(rng.randint(2, 99))
            terms.append(op)
            terms.append(right)
            if rng.random() < 0.3 and len(terms) >= 3:
                terms[-3:] = [f"({' '.join(terms[-3:])})"]
        ops_left -= 1
    return " ".join(terms)


def synthetic_prompt(tier: str, rng: random.Random) -> str:
    """A word problem of ``tier`` ("easy" | "medium" | "hard" | "mcq") in the simulator's protocol."""
    lo, hi = _OPS_BY_TIER[tier]
    expr = _expression(rng.randint(lo, hi), rng)
    setting = rng.choice(_SETTINGS)
    if tier != "mcq":
        return (
            f"{setting} How many are there at the end? Compute ${expr}$. Put the final answer in \\boxed{{}}."
        )
    from rllmtop.sim.outputs import evaluate_expression

    value = evaluate_expression(expr)
    v = 0 if value is None else value[0]
    options = [v, v + rng.randint(1, 9), v - rng.randint(1, 9), v + rng.randint(10, 50)]
    rng.shuffle(options)
    lines = "\n".join(f"({letter}) {o}" for letter, o in zip("ABCD", options, strict=True))
    return f"{setting} Which value is ${expr}$?\n{lines}\nAnswer with the letter in \\boxed{{}}."


def mixed_workload(
    n: int,
    rate: float,
    burstiness: float = 1.0,
    *,
    seed: int = 0,
    tiers: Mapping[str, float] | Sequence[str] = ("easy", "medium", "hard", "mcq"),
    max_tokens: int | None = 16384,
    thinking: bool = True,
    system: str | None = None,
    request_seeds: bool = True,
) -> list[Arrival]:
    """``n`` requests with Gamma arrivals and a tier mix (weights, or equal weights over a list)."""
    rng = random.Random(seed)
    weights = dict(tiers) if isinstance(tiers, Mapping) else dict.fromkeys(tiers, 1.0)
    names = list(weights)
    w = [weights[k] for k in names]
    times = gamma_arrivals(rate, burstiness, n, seed) if rate != float("inf") else [0.0] * n
    out = []
    for i, t in enumerate(times):
        tier = rng.choices(names, w)[0]
        out.append(
            Arrival(
                t=t,
                prompt=synthetic_prompt(tier, rng),
                max_tokens=max_tokens,
                seed=(seed * 1_000_003 + i) if request_seeds else None,
                thinking=thinking,
                system=system,
            )
        )
    return out
