"""A process that records synthetic records until it is killed or signalled (used by test_crash.py).

Usage: python recorder_child.py FILE kill|signal|inflight.

``kill``/``signal``: finished requests as fast as it can; prints ``t=<session seconds> n=<records handed>``
every 50 ms; in ``signal`` mode SIGINT/SIGTERM close the recording as interrupted, print ``closed n=<N>``
and exit 0.

``inflight``: a request is sent every tick (5 ms of session time, ``t = tick * TICK``) and lives ``LIFE``
ticks; each one in flight reports PROGRESS every ``EVERY`` ticks with ``reasoning = ticks since sent``
(rounded down to a multiple of EVERY); the writer commits on its own every 0.5 s. Every 100 ticks it
prints ``tick=<j>``; every 150 ticks it also calls ``flush()`` and then prints ``flushed=<j>``: everything
handed up to tick j is committed.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import synth

from rllmtop.events import LogEvent, RequestEvent, RequestKind, RequestRecord, RequestStatus, SessionState
from rllmtop.record.rebuild import starting_record
from rllmtop.record.writer import Recorder

TICK = 0.005
LIFE = 400
EVERY = 20


def inflight_record(i: int) -> RequestRecord:
    t = i * TICK
    return RequestRecord(
        rid=i,
        cls="hard" if i % 3 else "easy",
        t_scheduled=t,
        t_dispatch=t,
        t_start=t,
        t_sent=t,
        t_first_token=t + EVERY * TICK,
        t_first_reasoning=t + EVERY * TICK,
        t_done=(i + LIFE) * TICK,
        reasoning_tokens=LIFE,
        max_tokens=4096,
        finish_reason="stop",
        status=RequestStatus.OK,
    )


def inflight(rec: Recorder) -> None:
    j = 0
    while True:
        t = j * TICK
        r = inflight_record(j)
        rec.handle(RequestEvent(RequestKind.SENT, t, j, r.cls, record=starting_record(r)))
        for i in range(max(0, j - LIFE + 1), j):
            age = j - i
            if age % EVERY == 0:
                kind = RequestKind.FIRST_TOKEN if age == EVERY else RequestKind.PROGRESS
                rec.handle(RequestEvent(kind, t, i, "", age, 0))
        done = j - LIFE
        if done >= 0:
            fin = inflight_record(done)
            rec.handle(RequestEvent(RequestKind.DONE, t, done, fin.cls, LIFE, 0, "stop", fin))
        if j % 100 == 0:
            print(f"tick={j}", flush=True)
        if j % 150 == 0 and j:
            rec.flush()
            print(f"flushed={j}", flush=True)
        j += 1
        time.sleep(TICK / 2)


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    rec = Recorder(path, synth.info(session_id="child"))
    if mode == "inflight":
        inflight(rec)
        return
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
