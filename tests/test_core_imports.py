"""The core knows no screen: scraping, load generation, recording, replay and analysis never import textual."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "rllmtop.events",
    "rllmtop.scenario",
    "rllmtop.session",
    "rllmtop.headless",
    "rllmtop.view",
    "rllmtop.metrics.analysis",
    "rllmtop.metrics.prom",
    "rllmtop.metrics.scrape",
    "rllmtop.engines.adapters",
    "rllmtop.engines.launcher",
    "rllmtop.workload.runner",
    "rllmtop.workload.sse",
    "rllmtop.workload.http",
    "rllmtop.workload.schedule",
    "rllmtop.workload.heartbeat",
    "rllmtop.record.reader",
    "rllmtop.record.replay",
    "rllmtop.record.export",
    "rllmtop.sim.engine",
    "rllmtop.sim.server",
]


def test_core_modules_do_not_import_textual_or_rich() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core pulled in: {out.stdout.strip()}"
