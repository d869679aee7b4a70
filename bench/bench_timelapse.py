"""Speed 1 against a time-lapse: the same scenario run at `--speed 1` and `--speed K`, side by side.

    python bench/bench_timelapse.py                       # the default scenario, speeds 1 and 10
    python bench/bench_timelapse.py --scenario stragglers --speeds 1,5

Each run goes through the CLI (`rllmtop run SCENARIO --headless --speed K --record ...`), then the figures
are read back from the recordings: KV-cache peak, waiting-queue peak, preemptions over the run, TTFT and
E2E p50/p99 (session seconds: wall at speed 1, simulated at speed K), the span of the run, and the
simulator's drift behind its own schedule plus the client's worst event-loop lateness, which say whether
a run's figures can be trusted on this machine. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rllmtop.metrics.analysis import asu_summary  # noqa: E402
from rllmtop.record.reader import open_recording  # noqa: E402


def run(scenario: str, speed: float, db: Path) -> tuple[dict[str, float], float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "rllmtop",
            "run",
            scenario,
            "--headless",
            "--speed",
            f"{speed:g}",
            "--record",
            str(db),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.monotonic() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"speed {speed:g}: rllmtop exited {p.returncode}: {p.stderr.strip()[-400:]}")
    with open_recording(db) as rec:
        kv = [s.value for s in rec.samples(["kv_cache_usage"])]
        waiting = [s.value for s in rec.samples(["requests_waiting"])]
        pre = [s.value for s in rec.samples(["preemptions_total"])]
        drift = [s.value for s in rec.samples(["sim_drift_seconds"])]
        health = rec.client_health()
        reqs = rec.requests()
    s = asu_summary(reqs).overall
    return {
        "requests": float(len(reqs)),
        "kv_peak": max(kv, default=float("nan")),
        "waiting_peak": max(waiting, default=float("nan")),
        "preemptions": (max(pre) - min(pre)) if pre else float("nan"),
        "ttft_p50": s.ttft[50] or float("nan"),
        "e2e_p50": s.e2e[50] or float("nan"),
        "e2e_p99": s.e2e[99] or float("nan"),
        "span": max((r.t_done or 0.0) for r in reqs) if reqs else float("nan"),
        "sim_drift": (max(drift) - min(drift)) if drift else float("nan"),
        "client_lag_max_ms": 1000 * max((h.lag_max for h in health), default=float("nan")),
    }, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--speeds", default="1,10")
    args = ap.parse_args(argv)
    speeds = [float(x) for x in args.speeds.split(",")]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k in speeds:
            fig, wall = run(args.scenario, k, Path(d) / f"speed{k:g}.db")
            rows.append((k, fig, wall))
            print(f"speed {k:g}: {wall:.0f} s wall", flush=True)
    keys = list(rows[0][1])
    print(f"\n{args.scenario}: figures in session seconds (wall at speed 1, simulated otherwise)")
    print(f"{'':>20}" + "".join(f"{'speed ' + format(k, 'g'):>14}" for k, _, _ in rows))
    for key in keys:
        print(f"{key:>20}" + "".join(f"{fig[key]:>14.3f}" for _, fig, _ in rows))
    print(f"{'wall s':>20}" + "".join(f"{wall:>14.1f}" for _, _, wall in rows))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
