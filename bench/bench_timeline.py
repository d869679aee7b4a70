"""The per-request timeline and who-filled-the-cache at scale: time and bytes for N requests.

    python bench/bench_timeline.py               # 10k requests of ~300 chunks each
    python bench/bench_timeline.py --n 50000

Synthetic requests (Poisson arrivals at 20 req/s, 150-450 chunks, a few with a 3 s stall) and engine
readings every 0.25 s; measures request_spans (reads every gap blob), lane packing, the SVG (bytes and
time to write), the PNG (matplotlib), and cache_moments. Print the load average with the figures: the
machine is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rllmtop.events import MetricSample, RequestRecord, RequestStatus, encode_gaps  # noqa: E402
from rllmtop.metrics.analysis import StragglerRule, cache_moments, request_spans  # noqa: E402
from rllmtop.record.report.run import RunData, derive  # noqa: E402
from rllmtop.record.report.timeline import draw_timeline, timeline_data, timeline_svg  # noqa: E402


def workload(n: int, seed: int = 1) -> tuple[list[RequestRecord], list[MetricSample]]:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for i in range(n):
        t += rng.expovariate(20.0)
        k = rng.randint(150, 450)
        gaps = [int(rng.uniform(8_000, 30_000)) for _ in range(k - 1)]
        if i % 97 == 0:
            gaps[k // 2] = 3_000_000
        ft = t + rng.uniform(0.05, 1.5)
        r = int(k * 0.8)
        vis = ft + sum(gaps[:r]) * 1e-6
        done = ft + sum(gaps) * 1e-6
        reqs.append(
            RequestRecord(
                rid=i, cls=rng.choice(("easy", "hard", "mcq")), difficulty="medium", t_scheduled=t,
                t_dispatch=t, t_start=t, t_sent=t, t_first_token=ft, t_first_visible=vis, t_done=done,
                prompt_tokens=rng.randint(60, 400), reasoning_tokens=r, answer_tokens=k - r,
                status=RequestStatus.OK, finish_reason="stop", gaps=encode_gaps(gaps),
            )
        )  # fmt: skip
    end = max(r.t_done or 0 for r in reqs)
    samples = []
    s = 0.0
    j = 0
    while s <= end:
        samples += [
            MetricSample(s, "kv_cache_usage", 0.5 + 0.49 * ((j // 40) % 2)),
            MetricSample(s, "requests_running", 30.0),
            MetricSample(s, "requests_waiting", float(j % 13)),
            MetricSample(s, "preemptions_total", float(j // 20)),
        ]
        s += 0.25
        j += 1
    return reqs, samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    a = ap.parse_args()
    from rllmtop.record.report.figures import matplotlib_figure
    from tests.record.synth import info

    print(f"loadavg {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    reqs, samples = workload(a.n)
    chunks = sum(r.output_tokens for r in reqs)
    print(f"{a.n} requests, {chunks:,} chunks, {len(samples):,} samples")
    t = time.perf_counter()
    sp = request_spans(reqs)
    print(f"request_spans: {time.perf_counter() - t:.2f} s ({sp.stall_row.size} stalls)")
    t = time.perf_counter()
    _, lanes = sp.lanes()
    print(f"lanes: {time.perf_counter() - t:.2f} s ({lanes} lanes)")
    run = RunData(label="bench", info=info(), requests=reqs, samples=samples)
    (d,), _, _ = derive([run], StragglerRule())
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        td = timeline_data(d, "s, wall clock")
        size = timeline_svg(td, Path(tmp) / "t.svg", "bench")
        print(f"SVG: {size / 1e6:.2f} MB ({size / a.n:.0f} B/request) in {time.perf_counter() - t:.2f} s")
        fig = matplotlib_figure()(figsize=(12, 11.7), layout="constrained")
        t = time.perf_counter()
        draw_timeline(fig, td)
        fig.savefig(Path(tmp) / "t.png", dpi=100)
        png = (Path(tmp) / "t.png").stat().st_size
        print(f"PNG: {png / 1e3:.0f} kB in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    moments = cache_moments(reqs, samples)
    print(f"cache_moments: {len(moments)} moments in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
