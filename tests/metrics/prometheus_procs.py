"""Real processes for the Prometheus tests and bench: simulated engines and a Prometheus server.

Everything is on 127.0.0.1, every process is ended by its PID (``stop``), and every wait polls with a
deadline (never a fixed sleep standing in for an event we cannot await).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]


def have_prometheus() -> bool:
    return os.access(PROMETHEUS, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """End ``proc`` by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def start_sim(*args: str, port: int = 0, deadline: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m rllmtop.sim serve --port PORT``; returns (process, base URL) once it listens."""
    cmd = [sys.executable, "-m", "rllmtop.sim", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    buf = b""
    try:
        while time.monotonic() < end:
            if not sel.select(max(end - time.monotonic(), 0.0)):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith("Starting rllmtop sim server on "):
                    return proc, line.rsplit(" ", 1)[-1].strip().rstrip("/")
    finally:
        sel.close()
    stop(proc)
    raise RuntimeError(f"the simulator did not start within {deadline:g} s: {buf[-500:]!r}")


def get_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def start_prometheus(
    tmp: Path, targets: list[str], *, scrape_interval: str = "1s", deadline: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on 127.0.0.1 scraping ``targets`` (host:port) as job "engines"; returns once ready."""
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_interval}\n"
        "scrape_configs:\n"
        "  - job_name: engines\n"
        "    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    (tmp / "tsdb").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115 (closed by stop())
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-500:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
            if r.status == 200:
                return proc, url
        time.sleep(0.05)  # polling a process we cannot await, with a deadline
    stop(proc)
    raise RuntimeError(f"prometheus was not ready within {deadline:g} s")


def wait_targets(url: str, n_up: int, *, deadline: float = 30.0) -> dict[str, str]:
    """Until ``n_up`` targets are up; returns instance -> health."""
    end = time.monotonic() + deadline
    health: dict[str, str] = {}
    while time.monotonic() < end:
        doc = get_json(url + "/api/v1/targets?state=active")
        health = {t["labels"]["instance"]: t["health"] for t in doc["data"]["activeTargets"]}  # type: ignore[index]
        if sum(h == "up" for h in health.values()) >= n_up:
            return health
        time.sleep(0.1)  # polling Prometheus's view of its targets, with a deadline
    raise RuntimeError(f"targets not up within {deadline:g} s: {health}")


async def long_requests(base: str, n: int) -> list[asyncio.Task[None]]:
    """``n`` long streaming requests to the simulator at ``base`` (ignore_eos, 6000 tokens: they run
    for the whole test); the caller cancels the tasks."""
    async with httpx.AsyncClient() as c:
        model = (await c.get(base + "/v1/models")).json()["data"][0]["id"]

    async def one() -> None:
        body = {
            "model": model,
            "stream": True,
            "max_tokens": 6000,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "think hard about primes " * 20}],
        }
        with contextlib.suppress(httpx.HTTPError, asyncio.CancelledError):
            async with (
                httpx.AsyncClient(timeout=120) as c,
                c.stream("POST", base + "/v1/chat/completions", json=body) as r,
            ):
                async for _ in r.aiter_raw():
                    pass

    return [asyncio.create_task(one()) for _ in range(n)]
