"""Scale-out across machines: the workers of ``workers`` as Ray actors over a cluster's nodes.

``load.ray = ADDRESS`` (``--ray [ADDRESS]``; needs ``pip install 'rllmtop[ray]'``, and rllmtop of the same
version on every node). ADDRESS is what ``ray.init`` takes: ``auto`` (the cluster this machine belongs
to, e.g. on the head node or in a KubeRay pod), ``HOST:PORT`` (the head's GCS), ``ray://HOST:10001``
(Ray Client, from outside the cluster) or ``local`` (start a one-node Ray here).

Placement: one worker per node by default, ``load.workers`` per node (``"auto"``: the
``workers.auto_workers`` rule over the cluster's CPUs, spread evenly). Every alive node with CPUs takes
part (a head started with ``--num-cpus 0``, as KubeRay heads often are, takes none). Each actor is pinned
to its node with node-affinity scheduling (``NodeAffinitySchedulingStrategy(node_id, soft=False)``),
asking ``min(1, node CPUs / per node)`` CPUs, so it lands exactly there or fails to start (saying so).
Workers are numbered across nodes round-robin: worker 1 on the first node, worker 2 on the second, ...

Clock: the cluster's machines share no monotonic clock. Before the start the driver pings each actor a
few times (NTP-style: driver wall time t0, the actor's ``time.time()``, driver t1; offset = actor -
(t0 + t1) / 2, taken from the ping with the smallest round trip, uncertain by half of it). The offset is
recorded (``WorkerEvent.clock_offset``: seconds the node's clock is ahead of the session's) and the
actor maps its clock through it: its session time is its wall time minus the offset, anchored once to
its monotonic clock, so the agreed start instant and every time in its records are session times. A
large offset (beyond ``OFFSET_WARN``) is logged and said in the summary: the node's wall clock disagrees
with this one's (rllmtop corrected its own figures for it, but anything timed by that node's wall clock,
its engine logs included, is off by that much); an uncertain one (half the best round trip beyond
``OFFSET_WARN``) is said too, since send lag and TTFT of that node carry that uncertainty.

Records come back in batches: the driver long-polls each actor (``poll``: returns at once when batches
are waiting, else after ``POLL_WAIT``). A worker's last batch comes before its "done"; actors are killed
only after it was read (or when the run is cancelled and they do not end), so a normal end loses
nothing. Actors belong to this driver: if it dies, Ray ends them too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from rllmtop.errors import UserError
from rllmtop.redact import redact_text, redact_url
from rllmtop.workload.schedule import Schedule
from rllmtop.workload.workers import (
    WorkerCore,
    WorkerPool,
    WorkerSpec,
    _Worker,
    auto_workers,
    pack,
    unpack,
    worker_facts,
)

__all__ = ["OFFSET_WARN", "POLL_WAIT", "RaySender", "RayWorkerActor"]

POLL_WAIT = 0.1
"""Seconds an actor holds a poll when nothing is waiting."""
OFFSET_WARN = 0.005
"""Seconds of clock offset (or of its uncertainty) beyond which a node's offset is warned about."""
PINGS = 8
"""Clock pings per actor (the one with the smallest round trip is kept)."""
START_MARGIN = 0.25
"""Wall seconds between the start messages and the agreed start instant (they cross the network)."""


class RayWorkerActor:
    """One worker inside a Ray actor (made remote by :class:`RaySender`; threaded, so ``poll`` can wait
    while ``control`` gets through). The worker runs on its own event loop in a thread of the actor."""

    def __init__(self) -> None:
        self._core: WorkerCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: collections.deque[bytes] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def facts(self) -> dict[str, Any]:
        import ray

        from rllmtop._loop import loop_name, new_event_loop

        node_id = ray.get_runtime_context().get_node_id()
        probe = new_event_loop()
        try:
            name = loop_name(probe)
        finally:
            probe.close()
        f = worker_facts(node_id[:12], name)
        f["node_id"] = node_id
        return f

    def now(self) -> float:
        return time.time()

    def begin(self, spec: WorkerSpec) -> None:
        """Start the worker (it waits for the start message)."""
        if self._thread is not None:
            return
        made = threading.Event()

        def send(msg: tuple[Any, ...]) -> None:  # from the worker's loop thread
            body = pack(msg)[4:]
            with self._cv:
                self._out.append(body)
                self._cv.notify_all()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._core = WorkerCore(spec, send)
            made.set()
            await self._core.run()

        def thread() -> None:
            from rllmtop._loop import run

            try:
                run(main())
            except BaseException as e:  # the worker failed: say so, then look done to the driver
                send(("failed", f"{type(e).__name__}: {e}"))
            finally:
                made.set()

        self._thread = threading.Thread(target=thread, name="rllmtop-worker", daemon=True)
        self._thread.start()
        made.wait(60)

    def control(self, msg: tuple[Any, ...]) -> None:
        loop, core = self._loop, self._core
        if loop is not None and core is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(core.control, msg)

    def poll(self, wait: float) -> list[bytes]:
        """Batches waiting (each a message's pickle), at once when there are, else after ``wait``."""
        with self._cv:
            if not self._out:
                self._cv.wait(wait)
            out = list(self._out)
            self._out.clear()
        return out


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or (type(e).__name__ if isinstance(e, BaseException) else "")
    return redact_text(text[:limit])


def _ray_error(e: BaseException) -> str:
    """One line for a Ray error: the task's own exception when there is one, else Ray's first sentence
    and its "Worker exit detail"."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_one_line(cause)}"
    text = " ".join(str(e).split())
    first = text.split(". ")[0]
    detail = text.partition("Worker exit detail:")[2].strip()
    return _one_line(first + (f" ({detail})" if detail else ""))


PROBE_TIMEOUT = 5.0
"""Seconds to reach a cluster's GCS port before Ray is asked (Ray itself retries for minutes)."""


async def _probe(address: str) -> None:
    """A ``HOST:PORT`` address must accept a TCP connection (else ray.init would retry for minutes);
    ``auto`` and ``ray://`` addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        return  # not HOST:PORT: Ray says what it makes of it
    host = host.strip("[]") or "127.0.0.1"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port_n), PROBE_TIMEOUT)
    except TimeoutError:
        raise ConnectionError(f"no answer from {host}:{port_n} within {PROBE_TIMEOUT:g} s") from None
    except OSError as e:
        raise ConnectionError(f"{host}:{port_n}: {e.strerror or e}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _local_addresses() -> set[str]:
    out = {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        out.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return out


class RaySender(WorkerPool):
    """The workers as Ray actors (see the module doc): ``per_node`` per node with CPUs (0 = auto)."""

    kind = "Ray worker"

    def __init__(self, *args: Any, address: str, per_node: int = 1, **kw: Any) -> None:
        super().__init__(*args, workers=1, **kw)
        self.address = address
        self.per_node = per_node
        self._ray: Any = None
        self._owns_ray = False
        self._placement: list[tuple[str, float, str]] = []  # (node id, CPUs asked, node address)
        self._pumps: list[asyncio.Task[None]] = []
        self._actors: list[Any] = []

    # ----------------------------------------------------------------------------------- placement

    async def _prepare(self) -> None:
        try:
            import ray
        except ImportError as e:
            raise UserError(
                "load.ray needs Ray, which is not installed", "pip install 'rllmtop[ray]' (ray>=2.60)"
            ) from e
        self._ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a load tester talks to its targets only
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # its C++ warnings would garble the TUI
        if not ray.is_initialized():
            addr = None if self.address == "local" else self.address

            def init() -> None:  # in a thread: ray.init blocks, and off the main thread it leaves the
                # session's SIGTERM handler alone
                kw: dict[str, Any] = {"include_dashboard": False} if addr is None else {}
                ray.init(address=addr, log_to_driver=False, logging_level=logging.ERROR, **kw)

            try:
                if addr is not None:
                    await _probe(addr)
                await asyncio.to_thread(init)
            except Exception as e:
                raise UserError(
                    f"cannot connect to the Ray cluster at {self.address!r}: {_ray_error(e)}",
                    "give --ray auto on a cluster node, --ray HOST:6379 or --ray ray://HOST:10001 "
                    "(and check the head is up: `ray status`)",
                ) from e
            self._owns_ray = True
        nodes = [n for n in ray.nodes() if n.get("Alive") and float(n.get("Resources", {}).get("CPU", 0)) > 0]
        if not nodes:
            raise UserError(
                f"the Ray cluster at {self.address!r} has no alive node with CPUs",
                "add a worker node (`ray start --address HEAD:6379`)",
            )
        nodes.sort(key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"]))
        t = self.target
        urls = [self.base_url]
        if t is not None and getattr(t, "balance", "none") != "none":
            urls += [e.url for e in getattr(t, "endpoints", ())]
        near = [u for u in urls if _is_loopback(urlsplit(u).hostname or "")]
        if near:
            local = _local_addresses()
            far = [n["NodeManagerAddress"] for n in nodes if n.get("NodeManagerAddress") not in local]
            if far:
                raise UserError(
                    f"the engine URL {redact_url(near[0])} is a loopback address, which Ray nodes "
                    f"on other machines ({', '.join(sorted(set(far))[:3])}) cannot reach",
                    "serve the engine on an address the cluster can reach and give it (--base-url, or the "
                    "scenario's engine.url)",
                )
        per = self.per_node
        if per <= 0:  # auto: the rule over the cluster's CPUs, spread evenly
            cpus = sum(int(float(n["Resources"]["CPU"])) for n in nodes) or len(nodes)
            total, why = auto_workers(self.scenario, cpus=cpus)
            per = max(math.ceil(total / len(nodes)), 1)
            self._log("info", f"{why}: {per} per node over {len(nodes)} node(s)")
        rounds = []
        for _r in range(per):
            for n in nodes:
                cpu = float(n["Resources"]["CPU"])
                rounds.append((n["NodeID"], min(1.0, cpu / per), n.get("NodeManagerAddress", "")))
        self._placement = rounds
        self.count = len(rounds)
        self._log(
            "info",
            f"Ray cluster {self.address!r}: {len(nodes)} node(s) with CPUs, {per} worker(s) per node "
            "(node-affinity placement)",
        )

    def _start_margin(self) -> float:
        return START_MARGIN

    async def _launch(self, parts: list[Schedule]) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(RayWorkerActor)
        for k, _part in enumerate(parts):
            node_id, cpus, _addr = self._placement[k]
            w = self.workers[k + 1]
            w.node = node_id[:12]
            actor = remote.options(
                num_cpus=cpus,
                max_concurrency=4,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                name=None,
            ).remote()
            w.handle = actor
            self._actors.append(actor)
        await asyncio.gather(*(self._bring_up(self.workers[k + 1], parts[k]) for k in range(len(parts))))

    async def _bring_up(self, w: _Worker, part: Schedule) -> None:
        actor = w.handle
        node, addr = self._placement[w.id - 1][0], self._placement[w.id - 1][2]
        try:
            facts = await asyncio.wait_for(actor.facts.remote(), 120)
            w.pid = facts.get("pid")
            offset, rtt = await self._measure_offset(actor)
            w.clock_offset = offset
            await actor.begin.remote(self._spec(w.id - 1, part, None))
        except Exception as e:
            why = _ray_error(e)
            if "No module named 'rllmtop" in str(e):
                why = f"rllmtop is not installed on node {addr or node[:12]} ({why})"
            w.killed = ""  # a failure to start is a death, not a kill
            self._on_gone(w, f"it could not start on node {node[:12]} ({addr}): {why}")
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
            return
        self._note_offset(w, offset, rtt, addr)
        self._on_message(w, ("ready", facts))
        self._pumps.append(asyncio.get_running_loop().create_task(self._pump(w)))

    async def _measure_offset(self, actor: Any) -> tuple[float, float]:
        c = self.clock
        best: tuple[float, float] | None = None
        for _ in range(PINGS):
            d0 = c.started_at + c.wall(c.now())
            a = await actor.now.remote()
            d1 = c.started_at + c.wall(c.now())
            rtt = d1 - d0
            if best is None or rtt < best[1]:
                best = (a - (d0 + d1) / 2, rtt)
        assert best is not None
        return best

    def _note_offset(self, w: _Worker, offset: float, rtt: float, addr: str) -> None:
        where = f"node {w.node}" + (f" ({addr})" if addr else "")
        self._log(
            "debug",
            f"{w.name} on {where}: clock offset {offset * 1e3:+.3f} ms ± {rtt * 500:.3f} ms "
            f"(best of {PINGS} pings, round trip {rtt * 1e3:.3f} ms)",
        )
        if abs(offset) > OFFSET_WARN:
            note = (
                f"{where}'s clock is {offset * 1e3:+.1f} ms off this machine's (measured at start, ± "
                f"{rtt * 500:.1f} ms): rllmtop maps its times through the offset, but what that node "
                "timestamps by its own clock (its engine's logs) is off by that much; sync the clocks "
                "(chrony/NTP) to compare them"
            )
            if note not in self.warnings:
                self.warnings.append(note)
            self._log("warning", note)
        if rtt / 2 > OFFSET_WARN:
            note = (
                f"{where}'s clock offset is only known to ± {rtt * 500:.1f} ms (round trip "
                f"{rtt * 1e3:.1f} ms): send lag and TTFT of its requests carry that uncertainty"
            )
            self.warnings.append(note)
            self._log("warning", note)

    # -------------------------------------------------------------------------------------- traffic

    async def _pump(self, w: _Worker) -> None:
        actor = w.handle
        while not w.ended:
            try:
                batch = await actor.poll.remote(POLL_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._on_gone(w, _ray_error(e))
                return
            for body in batch:
                msg = unpack(body)
                if msg[0] == "failed":
                    self._on_gone(w, f"its worker failed: {_one_line(str(msg[1]))}")
                    return
                self._on_message(w, msg)
            if w.finished:
                self._on_gone(w, "")
                return

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        if w.handle is not None and w.ready:
            w.handle.control.remote(msg)

    def _kill(self, w: _Worker, why: str) -> None:
        w.killed = w.killed or why
        if w.ended:
            return
        self._log("warning", f"{w.name}: {why}: killing its actor")
        if w.handle is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(w.handle, no_restart=True)
        if not w.ready:  # no pump watches it
            self._on_gone(w, why)

    async def _reap(self) -> None:
        ray = self._ray
        for t in self._pumps:
            if not t.done():
                t.cancel()
        for t in self._pumps:
            with contextlib.suppress(BaseException):
                await t
        for w in self.workers.values():
            if not w.ended:
                self._on_gone(w, w.killed or "it was ended with the session")
        if ray is not None:
            for a in self._actors:  # drained already (their "done" was read): nothing is lost
                with contextlib.suppress(Exception):
                    ray.kill(a, no_restart=True)
            self._actors.clear()
            if self._owns_ray:
                self._owns_ray = False
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(ray.shutdown)

    @property
    def pids(self) -> list[int]:
        """PIDs of the actors' processes (on their nodes)."""
        return [w.pid for w in self.workers.values() if w.pid is not None]
