"""A process that records synthetic records until it is killed or signalled (used by test_crash.py).

Usage: python recorder_child.py FILE kill|signal. Prints ``t=<session seconds> n=<records handed>`` every
50 ms; in ``signal`` mode SIGINT/SIGTERM close the recording as interrupted, print ``closed n=<N>`` and exit 0.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import synth

from rllmtop.events import LogEvent, SessionState
from rllmtop.record.writer import Recorder


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    rec = Recorder(path, synth.info(session_id="child"))
    n = 0
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)  # like the session: note it, the main loop ends and closes

    if mode == "signal":
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    rng = random.Random(1)
    t0 = time.monotonic()
    next_scrape = next_print = 0.0
    while not stop:
        t = time.monotonic() - t0
        r = synth.record(n, max(0.0, t - 0.3), rng, reasoning=5, answer=5, itl=0.01)
        rec.handle(synth.done_event(replace(r, t_done=t)))  # t_done = when it was handed
        n += 1
        if t >= next_scrape:
            rec.handle(synth.scrape(t, n))
            next_scrape += 0.25
        if t >= next_print:
            rec.handle(LogEvent(t, "rllmtop", "info", f"progress n={n}"))
            print(f"t={t:.4f} n={n}", flush=True)
            next_print += 0.05
        time.sleep(0.002)
    rec.close(SessionState.INTERRUPTED, f"signal {signal.Signals(stop[0]).name}")
    print(f"closed n={n}", flush=True)


if __name__ == "__main__":
    main()
