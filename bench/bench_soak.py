"""Soak: a long headless run through the whole session (runner, scraper, recorder, live view), RSS sampled.

    python bench/bench_soak.py                       # 12,000 requests (~2 min)
    python bench/bench_soak.py --requests 30000 --rate 60 --speed 4

The simulator (its own process, a plain 7B profile: short answers) serves a constant-rate load of easy
requests; the session records to a temporary file and a LiveView consumes every record, as the headless face
does. The process's resident memory (VmRSS) is sampled every wall second; printed: RSS at the start of
sending, at the middle and at the end, the growth middle -> end (target: within 10%), and requests recorded
vs requests sent. Memory must stay flat: nothing of a finished request is kept in memory, the full history is
in the recording.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rllmtop._loop import run as run_loop  # noqa: E402
from rllmtop.commands import build_session  # noqa: E402
from rllmtop.events import ENDED, RequestEvent, RequestKind  # noqa: E402
from rllmtop.record.reader import open_recording  # noqa: E402
from rllmtop.scenario import load_scenario  # noqa: E402
from rllmtop.view import LiveView  # noqa: E402

SCENARIO = """
name = "soak"
seed = 11
[engine]
kind = "sim"
profile = "llm-7b"
speed = {speed}
[arrival]
process = "constant"
rate = {rate}
[load]
num_prompts = {n}
[[classes]]
name = "easy"
prompts = "math-easy"
max_tokens = 64
thinking = false
"""


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(n: int, rate: float, speed: float, workdir: Path) -> None:
    f = workdir / "soak.toml"
    f.write_text(SCENARIO.format(n=n, rate=rate, speed=speed))
    db = workdir / "soak.db"
    session = build_session(load_scenario(str(f)), mode="headless", record=db)
    view = LiveView()
    session.add_sink(view.handle)
    sent = ended = 0
    samples: list[tuple[float, int, float]] = []  # (wall s since start, ended, RSS MB)

    def count(rec: object) -> None:
        nonlocal sent, ended
        if isinstance(rec, RequestEvent):
            if rec.kind is RequestKind.SENT:
                sent += 1
            elif rec.kind in ENDED:
                ended += 1

    session.add_sink(count)
    t0 = time.monotonic()

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic() - t0, ended, rss_mb()))
            await asyncio.sleep(1.0)

    task = asyncio.get_running_loop().create_task(sampler())
    outcome = await session.run()
    task.cancel()
    wall = time.monotonic() - t0
    recorded = len(open_recording(db).requests())
    load = os.getloadavg()
    busy = [s for s in samples if s[1] > 0]
    if len(busy) < 3:
        print("too short to say anything: raise --requests")
        return
    start = busy[0]
    middle = min(busy, key=lambda s: abs(s[1] - ended / 2))
    end = busy[-1]
    growth = (end[2] - middle[2]) / middle[2] * 100
    print(
        f"soak: {n} requests at {rate:g} req/s (simulated), speed {speed:g}, {wall:.0f} s wall, {outcome.state.value}"
    )
    print(
        f"  RSS start {start[2]:.1f} MB ({start[1]} ended), middle {middle[2]:.1f} MB ({middle[1]} ended), "
        f"end {end[2]:.1f} MB ({end[1]} ended); middle -> end {growth:+.1f}% (target within 10%)"
    )
    print(f"  requests sent {sent}, ended {ended}, recorded {recorded}")
    print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=12000)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per simulated second")
    ap.add_argument("--speed", type=float, default=2.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        run_loop(soak(a.requests, a.rate, a.speed, Path(d)))


if __name__ == "__main__":
    main()
