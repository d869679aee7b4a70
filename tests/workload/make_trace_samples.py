"""Writes the synthetic sample traces shipped in ``scenarios/traces/`` (made by the project, not recorded).

    python tests/workload/make_trace_samples.py      # rewrites the three files

Each has 300 requests in its format's real column layout with plausible shapes (seeded, so the files are
reproducible; ``test_traces.py`` checks the shipped ones are exactly what this writes):

- ``burstgpt-sample.csv``: Gamma arrivals (1 req/s, burstiness 0.5) in whole milliseconds; ``Model``
  ChatGPT / GPT-4 (4:1); request tokens log-normal (median 400), response tokens log-normal (median 180);
  3% failed rows with ``Response tokens`` = 0, as BurstGPT marks failures; ``Log Type`` Conversation / API.
- ``mooncake-sample.jsonl``: Poisson arrivals (2 req/s), ``timestamp`` in ms; a third of the requests open
  with one of four shared documents (4-8 blocks of 512 tokens: equal ``hash_ids``), the rest are unique;
  output lengths log-normal (median 150).
- ``azure-sample.csv``: Poisson arrivals (2 req/s) from 2023-11-16 18:00, ``TIMESTAMP`` with 7 fractional
  digits as the Azure LLM inference traces write it; context tokens log-normal (median 900), generated
  tokens log-normal (median 120).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2] / "scenarios" / "traces"
N = 300


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.round(median * np.exp(sigma * rng.standard_normal(N))), lo, hi).astype(int)


def burstgpt() -> str:
    rng = np.random.default_rng(16_001)
    t = np.cumsum(rng.gamma(0.5, 1 / (1.0 * 0.5), N))
    req = _lognormal(rng, 400, 0.9, 4, 4000)
    resp = _lognormal(rng, 180, 0.8, 1, 1500)
    resp[rng.random(N) < 0.03] = 0
    model = np.where(rng.random(N) < 0.8, "ChatGPT", "GPT-4")
    log = np.where(rng.random(N) < 0.7, "Conversation log", "API log")
    lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    for i in range(N):
        lines.append(f"{t[i]:.3f},{model[i]},{req[i]},{resp[i]},{req[i] + resp[i]},{log[i]}")
    return "\n".join(lines) + "\n"


def mooncake() -> str:
    rng = np.random.default_rng(16_002)
    t = np.cumsum(rng.exponential(1 / 2.0, N))
    docs = [list(range(k * 100, k * 100 + int(rng.integers(4, 9)))) for k in range(4)]
    fresh = 1000
    out = _lognormal(rng, 150, 0.8, 1, 1500)
    lines = []
    for i in range(N):
        if rng.random() < 1 / 3:
            doc = docs[int(rng.integers(0, 4))]
            extra = int(rng.integers(20, 600))
            n_in = len(doc) * 512 + extra
            ids = list(doc)
        else:
            n_in = int(np.clip(round(600 * np.exp(0.8 * rng.standard_normal())), 16, 6000))
            ids = []
        while len(ids) * 512 < n_in:
            ids.append(fresh)
            fresh += 1
        row = {
            "timestamp": int(t[i] * 1000),
            "input_length": n_in,
            "output_length": int(out[i]),
            "hash_ids": ids,
        }
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def azure() -> str:
    rng = np.random.default_rng(16_003)
    t = np.cumsum(rng.exponential(1 / 2.0, N))
    ctx = _lognormal(rng, 900, 0.9, 8, 8000)
    gen = _lognormal(rng, 120, 0.9, 1, 1500)
    start = datetime.datetime(2023, 11, 16, 18, 0, 0)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(N):
        us = round(float(t[i]) * 1e7)  # 100 ns ticks, the 7 digits the Azure files print
        ts = start + datetime.timedelta(microseconds=us // 10)
        lines.append(f"{ts:%Y-%m-%d %H:%M:%S}.{us % 10_000_000:07d},{ctx[i]},{gen[i]}")
    return "\n".join(lines) + "\n"


SAMPLES = {"burstgpt-sample.csv": burstgpt, "mooncake-sample.jsonl": mooncake, "azure-sample.csv": azure}

if __name__ == "__main__":
    ROOT.mkdir(parents=True, exist_ok=True)
    for name, make in SAMPLES.items():
        (ROOT / name).write_text(make())
        print("wrote", ROOT / name)
