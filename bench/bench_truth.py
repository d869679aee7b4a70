"""The truth table: rllmtop's runner against a server that knows when it wrote every chunk.

    python bench/bench_truth.py                  # every mode, 100 requests each
    python bench/bench_truth.py --n 300 --modes reasoning,empty-deltas --rate 50

The ground-truth server (tests/workload/truth_server.py) runs in its own process pinned to CPU 1, the
runner here pinned to CPU 0; both read the same CLOCK_MONOTONIC. For every stream mode it prints the error
of TTFT, TTFVT and E2E (client stamp minus the server's write time of the first token / first visible
token / [DONE]) and of the send stamp (server read time minus the client's successful write), as median and
p99 in ms, and how the token split came out: exact (equal to the truth, tokens_exact), flagged (tokens_exact
False with a reason), wrong (differs from the truth with tokens_exact True: a lie). Then the heartbeat's own
CPU cost on an idle loop. The load average is printed before and after: the figures mean little on a busy
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from rllmtop._loop import run as run_loop  # noqa: E402
from rllmtop.clock import Clock  # noqa: E402
from rllmtop.events import ENDED, ClientHealth, RequestEvent, RequestRecord  # noqa: E402
from rllmtop.scenario import load_scenario  # noqa: E402
from rllmtop.workload.heartbeat import Heartbeat  # noqa: E402
from rllmtop.workload.runner import Runner  # noqa: E402
from rllmtop.workload.schedule import request_seed  # noqa: E402
from tests.workload.truth_server import MODES  # noqa: E402


def _server(gap: float, nr: int, na: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, str(ROOT / "tests" / "workload" / "truth_server.py"), "--port", "0"]
    cmd += ["--gap", str(gap), "--nr", str(nr), "--na", str(na)]
    if len(os.sched_getaffinity(0)) > 1:
        cmd += ["--cpu", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"truth server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def _scenario(n: int, rate: float) -> Any:
    text = (
        f'seed = 4\n[arrival]\nprocess = "poisson"\nrate = {rate}\n'
        f"[load]\nnum_prompts = {n}\nrequest_seed = true\n"
        '[[classes]]\nname = "t"\nprompts = "math-easy"\nmax_tokens = 1000\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return load_scenario(f.name)
    finally:
        os.unlink(f.name)


async def _run(sc: Any, url: str, mode: str, clock: Clock) -> tuple[list[RequestRecord], list[ClientHealth]]:
    recs: list[RequestRecord] = []
    health: list[ClientHealth] = []

    def publish(r: Any) -> None:
        if isinstance(r, RequestEvent) and r.kind in ENDED and r.record is not None:
            recs.append(r.record)
        elif isinstance(r, ClientHealth):
            health.append(r)

    await Runner(sc, base_url=url, model=mode, api_key=None, clock=clock, publish=publish).run()
    return recs, health


def _truths(url: str) -> dict[int, dict[str, Any]]:
    with urllib.request.urlopen(url + "/truths", timeout=10) as r:
        return {int(k): v for k, v in json.loads(r.read()).items()}


def _ms(e: list[float]) -> str:
    if not e:
        return "        -"
    a = np.array(e) * 1000
    return f"{np.median(a):+6.3f}/{np.percentile(a, 99):+6.3f}"


async def _idle_heartbeat(seconds: float) -> tuple[float, int]:
    clock = Clock()
    hb = Heartbeat(clock, lambda r: None)
    cpu0 = time.process_time()
    hb.start()
    await asyncio.sleep(seconds)
    hb.stop()
    return time.process_time() - cpu0, hb.ticks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="requests per mode")
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--gap", type=float, default=0.005, help="seconds between the server's chunks")
    ap.add_argument("--nr", type=int, default=24, help="reasoning text chunks per response")
    ap.add_argument("--na", type=int, default=8, help="answer text chunks per response")
    args = ap.parse_args(argv)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {0})
    print(f"load average {os.getloadavg()[0]:.2f}; {args.n} requests per mode at {args.rate:g} req/s")
    proc, url = _server(args.gap, args.nr, args.na)
    try:
        print(
            f"{'mode':18s} {'TTFT err':>15s} {'TTFVT err':>15s} {'E2E err':>15s} {'send err':>15s}"
            "   split exact/flagged/wrong   (ms: median/p99)"
        )
        lag_max = 0.0
        for mode in args.modes.split(","):
            sc = _scenario(args.n, args.rate)
            clock = Clock()
            recs, health = run_loop(_run(sc, url, mode, clock))
            truths = _truths(url)
            lag_max = max([lag_max, *(h.lag_max for h in health)])
            s = clock.from_monotonic
            err: dict[str, list[float]] = {"ttft": [], "ttfvt": [], "e2e": [], "sent": []}
            exact = flagged = wrong = failed = 0
            for rec in recs:
                t = truths[request_seed(sc.seed, rec.rid)]
                if rec.error:
                    failed += 1
                    continue
                if rec.t_first_token is not None and t["t_first_token"] is not None:
                    err["ttft"].append(rec.t_first_token - s(t["t_first_token"]))
                if rec.t_first_visible is not None and t["t_first_visible"] is not None:
                    err["ttfvt"].append(rec.t_first_visible - s(t["t_first_visible"]))
                if rec.t_done is not None and t["t_done"] is not None:
                    err["e2e"].append(rec.t_done - s(t["t_done"]))
                if rec.t_sent is not None:
                    err["sent"].append(s(t["t_recv"]) - rec.t_sent)
                right = (rec.reasoning_tokens, rec.answer_tokens) == (t["reasoning"], t["answer"])
                if rec.tokens_exact and right:
                    exact += 1
                elif not rec.tokens_exact and rec.split_note:
                    flagged += 1
                else:
                    wrong += 1
            more = f"  ({failed} failed)" if failed else ""
            print(
                f"{mode:18s} {_ms(err['ttft']):>15s} {_ms(err['ttfvt']):>15s} {_ms(err['e2e']):>15s} "
                f"{_ms(err['sent']):>15s}   {exact:5d} / {flagged:5d} / {wrong:5d}{more}"
            )
        print(f"client heartbeat: worst loop lateness during these runs {1000 * lag_max:.2f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    cpu, ticks = run_loop(_idle_heartbeat(5.0))
    print(
        f"heartbeat cost on an idle loop: {1000 * cpu / 5:.2f} ms CPU per s ({100 * cpu / 5:.3f}% of a core) "
        f"for {ticks / 5:.0f} ticks/s (includes the idle loop itself)"
    )
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
