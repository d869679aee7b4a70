"""Start an engine process, stream its logs, wait until it serves, and always tear it down.

:class:`EngineProcess` runs a :class:`~rllmtop.engines.launch_args.LaunchPlan` under a small guard process
(``_guard.py``) that leads a new session and process group. Teardown is layered so that no engine
outlives rllmtop, however rllmtop ends:

* :meth:`EngineProcess.stop` (normal end, Ctrl-C, exceptions; idempotent): SIGTERM to the group, wait
  ``grace``, SIGKILL to the group;
* :func:`reap_all` (signal handlers, ``finally`` blocks, and registered with :mod:`atexit`): SIGTERM to
  every live group at once without waiting; the guards finish the job;
* the guard itself: if rllmtop dies, even by SIGKILL, the kernel tells the guard (``PR_SET_PDEATHSIG``)
  and its lifeline pipe hits EOF; it then SIGTERMs the group, SIGKILLs what is left after its grace
  period, and reaps the engine's orphaned workers (it is their child subreaper).

PDEATHSIG follows the *thread* that started the guard: start engines from the thread whose event loop
lives as long as the session (the main thread in rllmtop).

Readiness is ``/health`` 200, then a non-empty ``/v1/models``. The engine's stdout and stderr become
``LogEvent(source="engine")`` records, scrubbed of the plan's secrets, and the last lines are kept for
error messages.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from rllmtop.clock import Clock, Publish
from rllmtop.engines.launch_args import LaunchPlan
from rllmtop.errors import UserError
from rllmtop.events import LogEvent

__all__ = [
    "EngineProcess",
    "EngineStartError",
    "group_alive",
    "live_engines",
    "reap_all",
]

GUARD = Path(__file__).with_name("_guard.py")
LOG_RING = 200  # lines kept for error messages
MAX_LINE = 4096  # longer engine lines are cut (progress bars, dumped configs)
_READ_CHUNK = 65536
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|Traceback)\b")
_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "WARN": "warning",
    "ERROR": "error",
    "CRITICAL": "error",
    "FATAL": "error",
    "Traceback": "error",
}

Progress = Callable[[float, str], None]


class EngineStartError(UserError):
    """The engine exited or timed out before it became ready. Carries its exit code and last log lines."""

    def __init__(self, what: str, hint: str, *, returncode: int | None, log_tail: tuple[str, ...]) -> None:
        super().__init__(what, hint)
        self.returncode = returncode
        self.log_tail = log_tail


_LIVE: set[EngineProcess] = set()
_atexit_registered = False


def group_alive(pgid: int) -> bool:
    """True while any process other than a zombie is in process group ``pgid`` (Linux: reads /proc;
    elsewhere: whether the group can be signalled)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def live_engines() -> tuple[EngineProcess, ...]:
    """Engines started and not yet known to be gone."""
    return tuple(_LIVE)


def reap_all() -> None:
    """SIGTERM every live engine's process group now, without waiting (safe in signal handlers and
    atexit). Each engine's guard escalates to SIGKILL after its grace period, even if rllmtop exits."""
    for engine in list(_LIVE):
        engine.kill_now()


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(reap_all)
        _atexit_registered = True


class EngineProcess:
    """One launched engine: its process group, logs, readiness and teardown.

    Use as ``async with EngineProcess(plan, clock=..., publish=..., name="vllm") as engine:`` (start on
    enter, stop on exit), or call :meth:`start` and :meth:`stop` yourself (``stop`` in a ``finally``).
    ``grace`` is the guard's own SIGTERM-to-SIGKILL delay when rllmtop cannot wait (``kill_now``, death).
    """

    def __init__(
        self,
        plan: LaunchPlan,
        *,
        clock: Clock,
        publish: Publish,
        name: str,
        grace: float = 10.0,
        log_ring: int = LOG_RING,
    ) -> None:
        self.plan = plan
        self.name = name
        self.died = asyncio.Event()
        """Set when the engine exits without having been asked to (a crash, an OOM kill, ...)."""
        self.version = ""
        self.models: tuple[str, ...] = ()
        self._clock = clock
        self._publish = publish
        self._grace = float(grace)
        self._ring: collections.deque[str] = collections.deque(maxlen=log_ring)
        self._proc: asyncio.subprocess.Process | None = None
        self._pgid: int | None = None
        self._base_url = plan.base_url
        self._url_known = asyncio.Event()
        if self._base_url:
            self._url_known.set()
        self._exited = asyncio.Event()
        self._stop_requested = False
        self._stopped = False
        self._stop_lock = asyncio.Lock()
        self._ready_re = re.compile(plan.ready_pattern) if plan.ready_pattern else None
        self._ready_line_seen = False
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------------ facts

    @property
    def pid(self) -> int | None:
        """The guard's pid (also the process-group id)."""
        return None if self._proc is None else self._proc.pid

    @property
    def pgid(self) -> int | None:
        return self._pgid

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the engine ("" until known, for a simulator started on port 0)."""
        return self._base_url

    @property
    def returncode(self) -> int | None:
        """The engine's exit code once it has exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def launch_command(self) -> tuple[str, ...]:
        """The command line with secrets removed: the only form fit for logs and recordings."""
        return self.plan.redacted_argv

    def last_lines(self, n: int = 20) -> tuple[str, ...]:
        """The engine's last ``n`` log lines (stdout and stderr interleaved, secrets removed)."""
        if n <= 0:
            return ()
        items = list(self._ring)
        return tuple(items[-n:])

    @property
    def last_line(self) -> str:
        return self._ring[-1] if self._ring else ""

    # ------------------------------------------------------------------------------------------ start

    async def start(self) -> None:
        """Start the engine under its guard in a new process group and begin streaming its output."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        env = os.environ.copy()
        env.update(self.plan.env)
        argv = (
            sys.executable, "-I", str(GUARD), repr(self._grace), str(os.getpid()), str(self.plan.nice),
            "--", *self.plan.argv,
        )  # fmt: skip
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,  # the lifeline: EOF tells the guard rllmtop is gone
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:  # the guard is our own Python: this is not the engine's command failing
            raise UserError(
                f"could not start {self.name}: {e.strerror or e}",
                "check that the Python running rllmtop can start subprocesses",
            ) from e
        self._pgid = self._proc.pid  # the guard leads its new session and group
        _LIVE.add(self)
        _register_atexit()
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._pump(self._proc.stdout), name=f"{self.name}-stdout"),
            asyncio.create_task(self._pump(self._proc.stderr), name=f"{self.name}-stderr"),
            asyncio.create_task(self._watch(), name=f"{self.name}-wait"),
        ]

    async def __aenter__(self) -> EngineProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------ ready

    async def wait_ready(self, timeout: float, progress: Progress | None = None) -> None:
        """Wait for ``/health`` 200 and then a non-empty ``/v1/models``; then read the engine's version.

        Fails fast with :class:`EngineStartError` if the engine exits first (its exit code and last log
        lines in the message), or after ``timeout`` seconds (the engine is stopped first).
        ``progress(elapsed_seconds, last_log_line)`` is called about twice a second while waiting.
        """
        import httpx

        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + timeout
        stage = "waiting for the process to listen"
        interval = 0.1
        headers = {"Authorization": f"Bearer {self.plan.api_key}"} if self.plan.api_key else {}
        async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(5.0), headers=headers) as client:
            while True:
                if self._exited.is_set():
                    await self.stop()
                    raise self._start_error(
                        f"{self.name} exited with code {self.returncode} before it became ready ({stage})",
                        "read its last log lines below, fix the engine's arguments or model, and retry",
                    )
                now = loop.time()
                if now >= deadline:
                    await self.stop()
                    raise self._start_error(
                        f"{self.name} did not become ready within {timeout:g} s ({stage})",
                        "read its last log lines below; raise engine.startup_timeout if it was still loading",
                    )
                if self._url_known.is_set():
                    stage = await self._probe(client, stage)
                    if stage == "ready":
                        await self._read_version(client)
                        return
                if progress is not None:
                    progress(loop.time() - t0, self.last_line)
                wait = min(interval, max(0.0, deadline - loop.time()))
                interval = min(interval * 1.5, 0.5)
                waiters = [asyncio.ensure_future(self._exited.wait())]
                if not self._url_known.is_set():
                    waiters.append(asyncio.ensure_future(self._url_known.wait()))
                try:
                    await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()

    async def _probe(self, client: Any, stage: str) -> str:
        import httpx

        base = self._base_url
        try:
            r = await client.get(f"{base}/health")
            if r.status_code != 200:
                return f"/health answered {r.status_code}"
            r = await client.get(f"{base}/v1/models")
            if r.status_code != 200:
                return f"/v1/models answered {r.status_code}"
            data = r.json().get("data") or []
            models = tuple(str(m.get("id", "")) for m in data if isinstance(m, dict))
            if not models:
                return "/v1/models lists no model yet"
            self.models = models
            return "ready"
        except httpx.TransportError:
            return "waiting for the process to listen" if not self._ready_line_seen else "waiting for /health"
        except ValueError:
            return "/v1/models did not answer JSON"

    async def _read_version(self, client: Any) -> None:
        import httpx

        for path, key in (("/version", "version"), ("/server_info", "version")):
            try:
                r = await client.get(f"{self._base_url}{path}")
                if r.status_code == 200:
                    v = r.json().get(key)
                    if isinstance(v, str) and v:
                        self.version = v
                        return
            except (httpx.HTTPError, ValueError, AttributeError):
                continue

    def _start_error(self, what: str, hint: str) -> EngineStartError:
        tail = self.last_lines(20)
        if tail:
            hint = hint + "\n" + "\n".join(f"    | {line}" for line in tail)
        return EngineStartError(what, hint, returncode=self.returncode, log_tail=tail)

    # ------------------------------------------------------------------------------------------ stop

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to ``grace`` s, then SIGKILL it; return the exit code.

        Idempotent and safe from ``finally`` blocks: the signal is sent before the first ``await``, so
        even a cancelled ``stop`` leaves the guard tearing the group down.
        """
        self._stop_requested = True
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            self._terminate()
        self._close_lifeline()
        async with self._stop_lock:
            if self._stopped:
                return proc.returncode
            if proc.returncode is None:
                self._log(
                    "rllmtop",
                    "info",
                    f"stopping {self.name} (SIGTERM to process group {self._pgid} via its guard)",
                )
                try:
                    await asyncio.wait_for(self._exited.wait(), grace + 1.0)
                except TimeoutError:
                    self._log(
                        "rllmtop", "warning", f"{self.name} still running {grace:g} s after SIGTERM; SIGKILL"
                    )
                    self._signal(signal.SIGKILL)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._exited.wait(), 10.0)
            else:
                await self._exited.wait()
            # the guard reaps its group; if something killed the guard first, finish the job (a live
            # member keeps the group id from being reused, so this cannot reach another group)
            if self._pgid is not None and group_alive(self._pgid):
                self._signal(signal.SIGKILL)
            if self._tasks:
                _, pending = await asyncio.wait(self._tasks, timeout=5.0)
                for t in pending:
                    t.cancel()
            self._stopped = True
            _LIVE.discard(self)
            return proc.returncode

    def kill_now(self) -> None:
        """Synchronous: SIGTERM the process group and close the lifeline, without waiting (for atexit and
        signal handlers). The guard SIGKILLs whatever is left after its grace period."""
        self._stop_requested = True
        if self._proc is not None and self._proc.returncode is None:
            self._terminate()
        self._close_lifeline()

    def _terminate(self) -> None:
        """SIGTERM to the guard alone: it passes one SIGTERM to every process of the group. (A group-wide
        SIGTERM on top of that reached each engine process twice, and the second could land while Python
        was finalising, after its handlers were reset: the engine then died by the signal.) If the guard
        is already gone, the group gets it directly."""
        proc = self._proc
        if proc is None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self._pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, sig)

    def _close_lifeline(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(Exception):
                self._proc.stdin.close()

    # ------------------------------------------------------------------------------------------ streams

    async def _watch(self) -> None:
        assert self._proc is not None
        rc = await self._proc.wait()
        # let the pumps drain what the engine wrote last, so error messages have its final words
        pumps = [t for t in self._tasks if t is not asyncio.current_task()]
        if pumps:
            await asyncio.wait(pumps, timeout=2.0)
        self._exited.set()
        if not self._stop_requested:
            self._log("rllmtop", "error", f"{self.name} exited unexpectedly with code {rc}")
            self.died.set()
        else:
            self._log("rllmtop", "info", f"{self.name} exited with code {rc}")
        _LIVE.discard(self)

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            chunk = await stream.read(_READ_CHUNK)
            if not chunk:
                break
            buf += chunk
            *lines, buf = re.split(rb"\r\n|\r|\n", buf)
            for raw in lines:
                self._line(raw)
            if len(buf) > MAX_LINE * 4:  # a line without end: emit what we have
                self._line(buf)
                buf = b""
        if buf:
            self._line(buf)

    def _line(self, raw: bytes) -> None:
        text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
        if not text:
            return
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + " …"
        for secret in self.plan.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        self._ring.append(text)
        if self._ready_re is not None and not self._ready_line_seen:
            m = self._ready_re.search(text)
            if m:
                self._ready_line_seen = True
                url = m.groupdict().get("url")
                if url and not self._base_url:
                    self._base_url = _normalise_url(url)
                    self._url_known.set()
        m = _LEVEL.search(text, 0, 120)
        level = _LEVELS[m.group(1)] if m else "info"
        self._log("engine", level, text)

    def _log(self, source: str, level: str, text: str) -> None:
        self._publish(LogEvent(t=self._clock.now(), source=source, level=level, text=text))


def _normalise_url(url: str) -> str:
    url = url.rstrip("/.,;")
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
