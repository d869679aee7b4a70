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
