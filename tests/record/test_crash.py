"""A recording process killed with SIGKILL loses at most ~the last second; SIGINT/SIGTERM end it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rllmtop.events import SessionState
from rllmtop.record.reader import open_recording

CHILD = Path(__file__).with_name("recorder_child.py")


def start_child(path: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(path), mode], stdout=subprocess.PIPE, text=True, env=env
    )


def read_until(proc: subprocess.Popen[str], t_min: float) -> tuple[float, int]:
    """Read the child's progress lines until its session time reaches ``t_min``."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"child ended early with code {proc.wait()}"
        fields = dict(kv.split("=") for kv in line.split())
        t, n = float(fields["t"]), int(fields["n"])
        if t >= t_min:
            return t, n


def test_sigkill_loses_at_most_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    proc = start_child(path, "kill")
    try:
        t_last, _ = read_until(proc, 2.0)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with open_recording(path) as r:
        assert r.status is SessionState.INCOMPLETE
        assert "without closing" in r.status_detail
        reqs = r.requests()
        rids = [q.rid for q in reqs]
        assert rids == list(range(len(rids)))  # a prefix: nothing in the middle is lost
        newest = max(q.t_done for q in reqs if q.t_done is not None)
        assert newest >= t_last - 1.0, (newest, t_last)
        assert r.scrapes() and max(s.t for s in r.scrapes()) >= t_last - 1.25
        assert r.logs() and r.duration >= newest
        assert r.info.session_id == "child"
    with open_recording(path) as again:  # opening it read-only changed nothing
        assert len(again.requests()) == len(reqs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigint_and_sigterm_end_as_interrupted_with_everything_flushed(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "stopped.db"
    proc = start_child(path, "signal")
    try:
        read_until(proc, 0.5)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    closed = [line for line in out.splitlines() if line.startswith("closed ")]
    assert len(closed) == 1
    n = int(closed[0].split("=")[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.db"]  # no WAL left behind
    with open_recording(path) as r:
        assert r.status is SessionState.INTERRUPTED
        assert r.status_detail == f"signal {signal.Signals(sig).name}"
        assert len(r.requests()) == n  # every record handed before the signal is in the file


def test_sigkill_with_requests_in_flight_keeps_every_request_sent(tmp_path: Path) -> None:
    """Before: only ended requests were stored; killed 20 s into a run, 16 of ~180 sent were in the file.
    Now every request sent before the last commit is there, with its state at that commit."""
    import time

    from recorder_child import EVERY, LIFE, TICK, inflight_record

    from rllmtop.events import RequestStatus

    path = tmp_path / "inflight.db"
    proc = start_child(path, "inflight")
    assert proc.stdout is not None
    flushed = -1
    ticks: list[tuple[float, int]] = []  # (when the test read it, tick)
    try:
        while True:
            line = proc.stdout.readline()
            assert line, f"child ended early with code {proc.wait()}"
            key, _, value = line.strip().partition("=")
            if key == "flushed":
                flushed = int(value)
            elif key == "tick":
                ticks.append((time.monotonic(), int(value)))
            if flushed >= 2 * LIFE and ticks and ticks[-1][0] - ticks[0][0] >= 3.0:
                break
    finally:
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
    assert proc.returncode == -signal.SIGKILL
    with open_recording(path) as r:
        assert r.status is SessionState.INCOMPLETE
        rows = {q.rid: q for q in r.requests()}
        assert sorted(rows) == list(range(len(rows)))  # a prefix: no request in the middle is lost
        assert len(rows) > flushed  # every request sent before the last commit we know of ...
        in_flight = 0
        for rid in range(flushed + 1):  # ... with its state at that commit (or later)
            q = rows[rid]
            assert q.t_sent == rid * TICK and q.cls == inflight_record(rid).cls
            if rid + LIFE <= flushed:
                assert q == inflight_record(rid)  # ended before that commit: its final record
                continue
            if q.status is RequestStatus.IN_FLIGHT:
                in_flight += 1
                at_commit = (flushed - rid) // EVERY * EVERY
                assert q.reasoning_tokens >= at_commit and q.t_done is None, (rid, q.reasoning_tokens)
                if at_commit >= EVERY:
                    assert q.t_first_token == (rid + EVERY) * TICK
            else:
                assert q == inflight_record(rid)
        assert in_flight >= LIFE // 2  # the kill really caught requests on the wire
        # the writer's own commits (every 0.5 s) keep what was sent well before the kill, too
        margin = 2.5
        old = [tick for when, tick in ticks if when <= killed_at - margin]
        if old:
            assert max(old) in rows
        assert r.verify().ok
        replayed = [e for e in r.stream() if getattr(e, "rid", None) == flushed]
        assert replayed and replayed[0].kind.value == "sent" and all(e.kind.value != "done" for e in replayed)
