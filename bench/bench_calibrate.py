"""How long `rllmtop sim calibrate` takes on a large recording, without the file: synthetic requests whose
chunks follow a known step-time model (so the fit has work to do), N requests x T tokens.

    .venv/bin/python bench/bench_calibrate.py [N] [T]

Prints the seconds per stage and the fitted terms against the synthetic truth. Report it with the load
average (it prints /proc/loadavg).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from rllmtop.calibrate import _calibrate, _reduce
from rllmtop.events import MetricSample, RequestRecord, SessionInfo, encode_gaps

T0, BETA, A = 3e-3, 80e-6, 20e-6  # the synthetic engine: step = T0 + (BETA + A) * B (decode)


def synth(n: int, tokens: int, seed: int = 0) -> tuple[list[RequestRecord], list[MetricSample], float]:
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0, n / 8.0, n))
    recs = []
    # a crude batch size: the requests whose [start, start + tokens*step] overlaps, iterated twice
    dur = np.full(n, tokens * (T0 + (BETA + A) * 16))
    for _ in range(2):
        ends = starts + dur
        b = np.array([np.sum((starts <= s) & (ends > s)) for s in starts], dtype=float)
        dur = tokens * (T0 + (BETA + A) * b)
    for i in range(n):
        step = T0 + (BETA + A) * b[i]
        gaps = np.maximum(rng.normal(step, 0.1 * step, tokens - 1), 1e-4)
        ftt = starts[i] + 0.05
        recs.append(
            RequestRecord(
                rid=i,
                cls="c",
                difficulty="easy",
                t_sent=float(starts[i]),
                t_first_token=float(ftt),
                t_done=float(ftt + gaps.sum()),
                prompt_tokens=100,
                reasoning_tokens=tokens // 2,
                answer_tokens=tokens - tokens // 2,
                finish_reason="stop",
                gaps=encode_gaps((gaps * 1e6).astype(int)),
            )
        )
    return recs, [], float(b.mean())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with open("/proc/loadavg") as f:
        print("load average:", " ".join(f.read().split()[:3]))
    t = time.perf_counter()
    recs, samples, b = synth(n, tokens)
    t1 = time.perf_counter()
    info = SessionInfo(session_id="bench", started_at=0.0, mode="headless", engine_kind="vllm")
    reduced = _reduce("bench", info, recs, samples)
    t2 = time.perf_counter()
    cal = _calibrate([reduced], "rllm-7b")
    t3 = time.perf_counter()
    print(f"{n} requests x {tokens} tokens ({n * tokens:,} gaps)")
    print(f"  synthesise {t1 - t:.2f} s, reduce {t2 - t1:.2f} s, fit {t3 - t2:.2f} s")
    assert cal.steps is not None
    th = cal.steps.theta
    fit = th["t0"] + (th["beta"] + th["a"]) * b + th["c"] * b * 350
    print(
        f"  decode step at the mean batch {b:.1f}: fitted {fit * 1e3:.3f} ms, truth "
        f"{(T0 + (BETA + A) * b) * 1e3:.3f} ms; {cal.steps.windows} windows"
    )


if __name__ == "__main__":
    main()
