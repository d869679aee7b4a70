"""Open-loop send lag of rllmtop's runner, and how many concurrent streams it holds while sending on time.

    python bench/bench_sendlag.py                    # both parts
    python bench/bench_sendlag.py --part lag --rate 500 --burstiness 0.25 --seconds 10
    python bench/bench_sendlag.py --part held --levels 500,1000,2000,3000

Part ``lag``: the real Runner sends a Gamma schedule (default 500 req/s, burstiness 0.25) to the minimal SSE
server (bench/sse_server.py, its own process pinned to CPU 1; each response streams 20 chunks, one per 10 ms);
send lag = the successful write minus the scheduled time (minus cap wait and connect), per request.
Target: p99 <= 1 ms.

Part ``held``: for each level N, requests arrive at N/D per second and each streams one chunk per 50 ms for
D seconds, so N streams are in flight after the ramp; send lag is measured over the steady window. The most
streams held with send-lag p99 under 5 ms is reported (target >= 2,000 on 2 cores).

The runner process is pinned to CPU 0. Figures depend on what else the machine runs: the load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rllmtop._loop import loop_name, new_event_loop  # noqa: E402
from rllmtop._loop import run as run_loop  # noqa: E402
from rllmtop.clock import Clock  # noqa: E402
from rllmtop.events import ENDED, RequestEvent  # noqa: E402
from rllmtop.scenario import load_scenario  # noqa: E402
from rllmtop.workload.runner import Runner  # noqa: E402


def _server(n: int, interval: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        str(HERE / "sse_server.py"),
        "--port",
        "0",
        "--n",
        str(n),
        "--interval",
        str(interval),
    ]
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if ncpu > 1:
        cmd += ["--cpu", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"bench server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _scenario(text: str) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return load_scenario(f.name)
    finally:
        os.unlink(f.name)


FREEZE = True
HEARTBEAT = True


async def _run(sc: Any, url: str, use_timerfd: bool) -> tuple[list[Any], float, float, str]:
    records: list[Any] = []

    def publish(rec: Any) -> None:
        if isinstance(rec, RequestEvent) and rec.kind in ENDED and rec.record is not None:
            records.append(rec.record)

    runner = Runner(
        sc,
        base_url=url,
        model="bench",
        api_key=None,
        clock=Clock(),
        publish=publish,
        use_timerfd=use_timerfd,
        heartbeat=HEARTBEAT,
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await runner.run()
    return records, time.process_time() - cpu0, time.perf_counter() - wall0, runner.pacer_kind


def _stats(lags: np.ndarray) -> str:
    ms = lags * 1000
    return (
        f"p50 {np.percentile(ms, 50):.3f} ms  p99 {np.percentile(ms, 99):.3f} ms  "
        f"p99.9 {np.percentile(ms, 99.9):.3f} ms  max {ms.max():.3f} ms  (n={ms.size})"
    )


def part_lag(rate: float, burstiness: float, seconds: float, use_timerfd: bool) -> None:
    proc, url = _server(20, 0.010)
    try:
        sc = _scenario(
            f'seed = 1\n[arrival]\nprocess = "gamma"\nrate = {rate}\nburstiness = {burstiness}\n'
            f'[load]\nduration = {seconds}\n[[classes]]\nprompts = "math-easy"\nmax_tokens = 64\n'
        )
        records, cpu, wall, pacer = run_loop(_run(sc, url, use_timerfd))
        lags = np.array([r.send_lag for r in records if r.send_lag is not None])
        errors = sum(1 for r in records if r.error)
        print(
            f"send lag at {rate:g} req/s, burstiness {burstiness:g}, {seconds:g} s, pacer {pacer}: {_stats(lags)}"
        )
        print(f"  client CPU {cpu:.2f} s over {wall:.2f} s ({100 * cpu / wall:.0f}%), errors {errors}")
    finally:
        _stop(proc)


def part_held(levels: list[int], hold: float, interval: float, use_timerfd: bool) -> None:
    n_chunks = int(hold / interval)
    proc, url = _server(n_chunks, interval)
    best = 0
    try:
        for level in levels:
            rate = level / hold
            sc = _scenario(
                f'seed = 2\n[arrival]\nprocess = "gamma"\nrate = {rate}\nburstiness = 1\n'
                f"[load]\nduration = {2 * hold}\n"
                f'[[classes]]\nprompts = "math-easy"\nmax_tokens = 64\n'
            )
            records, cpu, wall, _ = run_loop(_run(sc, url, use_timerfd))
            steady = np.array(
                [r.send_lag for r in records if r.t_scheduled >= hold and r.send_lag is not None]
            )
            chunks = sum(r.completion_tokens or 0 for r in records)
            errors = sum(1 for r in records if r.error)
            p99 = float(np.percentile(steady, 99)) if steady.size else float("nan")
            ok = p99 < 0.005 and errors == 0
            best = level if ok else best
            print(
                f"{level:5d} streams held ({rate:.0f} req/s, one chunk per {interval * 1000:.0f} ms): "
                f"steady send lag {_stats(steady)}; client CPU {100 * cpu / wall:.0f}% "
                f"({1e6 * cpu / max(chunks, 1):.1f} ms per 1k chunks), errors {errors} -> {'ok' if ok else 'MISSED'}"
            )
        print(
            f"most concurrent streams held with send-lag p99 < 5 ms: {best if best else 'none of the levels'}"
        )
    finally:
        _stop(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["lag", "held", "both"], default="both")
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--burstiness", type=float, default=0.25)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--levels", default="500,1000,2000,3000")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds each held stream lasts")
    ap.add_argument("--interval", type=float, default=0.050, help="seconds between chunks of a held stream")
    ap.add_argument("--no-timerfd", action="store_true", help="use the portable pacer (loop timer + spin)")
    ap.add_argument("--no-freeze", action="store_true", help="do not freeze the GC's old objects during runs")
    ap.add_argument("--no-heartbeat", action="store_true", help="run without the client heartbeat (its cost)")
    ap.add_argument(
        "--ballast",
        type=int,
        default=0,
        metavar="N",
        help="keep N small objects alive, like an application's heap (the TUI, caches)",
    )
    args = ap.parse_args(argv)
    global FREEZE, HEARTBEAT
    FREEZE = not args.no_freeze
    HEARTBEAT = not args.no_heartbeat
    ballast = [[i] for i in range(args.ballast)]
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {0})
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"load average {os.getloadavg()[0]:.2f}; GC freeze during runs: {FREEZE}; heartbeat {HEARTBEAT}; "
        f"ballast {args.ballast} objects; "
        f"event loop {loop_name(new_event_loop())} (RLLMTOP_LOOP=asyncio for the standard one)"
    )
    if args.part in ("lag", "both"):
        part_lag(args.rate, args.burstiness, args.seconds, not args.no_timerfd)
    if args.part in ("held", "both"):
        levels = [int(x) for x in args.levels.split(",")]
        part_held(levels, args.hold, args.interval, not args.no_timerfd)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main())
