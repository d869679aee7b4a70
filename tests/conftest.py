"""Fixtures shared across test packages."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def outside_sim() -> Iterator[str]:
    """A simulator started outside rllmtop, in its own process on 127.0.0.1 (speed 20): its base URL.
    Killed by PID at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop.sim", "serve", "--port", "0", "--speed", "20", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        if "Starting rllmtop sim server on " in line:
            url = line.split(" on ", 1)[1].strip()
            break
    try:
        assert url, "the simulator did not start"
        yield url
    finally:
        proc.kill()
        proc.wait(10)
