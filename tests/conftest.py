"""Fixtures shared across test packages."""

from __future__ import annotations

import os
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


REAL_COMPONENTS = ("prometheus", "router", "ray", "real_engine")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Where CI asks for the real components (RLLMTOP_REQUIRE_REAL=1, set by .ci/run), a test that needs one
    and skips because it is missing fails instead: a CI that silently skipped Prometheus proved nothing."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("RLLMTOP_REQUIRE_REAL") == "1" and report.skipped:
        needs = [m for m in REAL_COMPONENTS if item.get_closest_marker(m) is not None]
        if needs:
            report.outcome = "failed"
            report.longrepr = (
                f"needs {', '.join(needs)} but was skipped (RLLMTOP_REQUIRE_REAL=1): {report.longrepr}"
            )
