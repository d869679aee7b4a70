"""Scale-out: what 1 and 2 worker processes (or Ray actors) hold, deliver and cost, against the in-process client.

    python bench/bench_workers.py                                  # parts held + codec, 1 and 2 workers
    python bench/bench_workers.py --part held --workers 1,2 --levels 1000,2000,3000,4000
    unshare -n bash -c 'ip link set lo up && .venv/bin/python bench/bench_workers.py --part held --ray cluster \
        --workers 1'                   # Ray actors, one per node of a 2-node local cluster (loopback only)
    python bench/bench_workers.py --part codec

Part ``held``: for each sender (``0`` = the in-process Runner, ``N`` = N worker processes) and each level L,
requests arrive at L/D per second and each streams one chunk per ``--interval`` (50 ms) for D = ``--hold``
seconds, so L streams are in flight after the ramp. Reported per level: steady-window send lag (the
successful write minus the scheduled time, minus cap wait and connect; per request), paced chunks/s
delivered (chunks received over the steady window), the senders' CPU per 1,000 chunks per worker (each
worker's own ``process_time``, as it reports it when done; the in-process runner's likewise) and each
worker's peak RSS (VmHWM: its own since exec; for the in-process runner the bench process's peak so
far, records included, an upper bound). The most streams held with send-lag p99 < 5 ms, and its chunks/s, is the figure; the ratio
2 workers / 1 worker is printed (target >= 1.7x).

The SSE server (bench/sse_server.py's paced ticker) runs as ``--servers`` processes sharing one port
(SO_REUSEPORT: the kernel spreads connections), so the server side is not the one bottleneck. On a 2-core
machine the server processes and the workers share the cores: the figures say what this box holds, and
the load average (printed before and after) says how busy it was otherwise.

Part ``codec``: the cost of the worker wire per request event, encoded (fields as lists) and pickled
versus the records pickled as themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rllmtop._loop import run as run_loop  # noqa: E402
from rllmtop.clock import Clock  # noqa: E402
from rllmtop.events import ENDED, RequestEvent, RequestKind, RequestRecord, RequestStatus  # noqa: E402
from rllmtop.scenario import load_scenario  # noqa: E402
from rllmtop.workload import workers as W  # noqa: E402

_SERVER = """
import asyncio, os, signal, socket, sys
sys.path.insert(0, {here!r})
import sse_server as S
S._raise_nofile()
async def main():
    server = S.Server({{"n": {n}, "interval": {interval}, "per_write": 1}})
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: S._Proto(server), "127.0.0.1", {port}, backlog=8192, reuse_port=True)
    print("listening on http://127.0.0.1:%d" % srv.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t = loop.create_task(server.ticker())
    await stop.wait()
    t.cancel()
    srv.close()
asyncio.run(main())
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers(count: int, n: int, interval: float) -> tuple[list[subprocess.Popen[str]], str]:
    port = _free_port()
    procs: list[subprocess.Popen[str]] = []
    code = _SERVER.format(here=str(HERE), n=n, interval=interval, port=port)
    for _ in range(count):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if "listening on " not in line:
            _stop(procs)
            raise SystemExit(f"bench server did not start: {line!r}")
    return procs, f"http://127.0.0.1:{port}"


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        with contextlib.suppress(OSError):
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _scenario(text: str) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return load_scenario(f.name)
    finally:
        os.unlink(f.name)


async def _run(
    sc: Any, url: str, workers: int, ray: str | None
) -> tuple[list[RequestRecord], list[dict[str, Any]]]:
    """Run the schedule through the chosen sender; (ended records, per-worker usage)."""
    records: list[RequestRecord] = []

    def publish(rec: Any) -> None:
        if rec.__class__ is RequestEvent and rec.kind in ENDED and rec.record is not None:
            records.append(rec.record)

    clock = Clock()
    kw: dict[str, Any] = dict(base_url=url, model="bench", api_key=None, clock=clock, publish=publish)
    if ray is not None:
        from rllmtop.workload.ray_workers import RaySender

        sender: Any = RaySender(sc, address=ray, per_node=max(workers, 1), **kw)
    elif workers >= 1:
        sender = W.ProcessSender(sc, workers=workers, **kw)
    else:
        from rllmtop.workload.runner import Runner

        sender = Runner(sc, **kw)
        cpu0 = time.process_time()
        await sender.run()
        # the bench process's own peak so far (it also holds the records): an upper bound
        return records, [{"cpu_s": time.process_time() - cpu0, "max_rss_kb": W._max_rss_kb()}]
    await sender.run()
    return records, [w.usage for w in sender.workers.values()]


def part_held(
    senders: list[int], levels: list[int], hold: float, interval: float, servers: int, ray: str | None
) -> None:
    n_chunks = int(hold / interval)
    procs, url = _servers(servers, n_chunks, interval)
    best: dict[int, tuple[int, float]] = {}
    try:
        for workers in senders:
            name = "in-process runner" if workers == 0 else f"{workers} worker{'s' if workers > 1 else ''}"
            if ray is not None:
                name = f"Ray, {workers} actor(s) per node"
            for level in levels:
                rate = level / hold
                sc = _scenario(
                    f'seed = 2\n[arrival]\nprocess = "gamma"\nrate = {rate}\nburstiness = 1\n'
                    f"[load]\nduration = {2 * hold}\n"
                    f'[[classes]]\nprompts = "math-easy"\nmax_tokens = 64\n'
                )
                records, usage = run_loop(_run(sc, url, workers, ray))
                steady = [r for r in records if r.t_scheduled >= hold]
                lags = np.array([r.send_lag for r in steady if r.send_lag is not None])
                errors = sum(1 for r in records if r.status is not RequestStatus.OK)
                chunks = sum(r.completion_tokens or 0 for r in records)
                t0 = min((r.t_start for r in records if r.t_start is not None), default=0.0)
                t1 = max((r.t_done for r in records if r.t_done is not None), default=0.0)
                span = max(t1 - t0, 1e-9)
                p99 = float(np.percentile(lags, 99)) if lags.size else float("nan")
                ok = p99 < 0.005 and errors == 0
                cpu = [u.get("cpu_s") or 0.0 for u in usage]
                rss = [(u.get("max_rss_kb") or 0) / 1024 for u in usage]
                per_1k = 1000 * sum(cpu) / max(chunks, 1)  # CPU seconds per 1,000 chunks, all workers
                if ok and level >= best.get(workers, (0, 0.0))[0]:
                    best[workers] = (level, chunks / span)
                print(
                    f"{name:>18}: {level:5d} streams: send lag p50 {np.percentile(lags, 50) * 1e3:.2f} ms "
                    f"p99 {p99 * 1e3:.2f} ms max {lags.max() * 1e3:.1f} ms; {chunks / span:,.0f} chunks/s "
                    f"over {span:.1f} s; CPU {1e3 * per_1k:.1f} ms per 1k chunks "
                    f"(per worker: {', '.join(f'{c:.1f} s' for c in cpu)}); peak RSS "
                    f"{', '.join(f'{m:.0f} MiB' for m in rss)}; errors {errors} -> {'ok' if ok else 'MISSED'}",
                    flush=True,
                )
        for workers, (level, cps) in sorted(best.items()):
            print(
                f"sender {workers}: most streams held at send-lag p99 < 5 ms: {level} ({cps:,.0f} chunks/s)"
            )
        if 1 in best and 2 in best:
            print(
                f"2 workers / 1 worker: streams {best[2][0] / best[1][0]:.2f}x, chunks/s "
                f"{best[2][1] / best[1][1]:.2f}x (target >= 1.7x)"
            )
    finally:
        _stop(procs)


def _event(rng: random.Random, rid: int) -> RequestEvent:
    rec = RequestRecord(
        rid=rid,
        cls="math",
        difficulty="hard",
        prompt_id=f"math-hard/{rid}",
        t_scheduled=rng.random() * 100,
        t_dispatch=rng.random(),
        t_start=rng.random(),
        connect_s=0.0001,
        t_sent=rng.random(),
        t_first_token=rng.random(),
        t_done=rng.random(),
        prompt_tokens=120,
        reasoning_tokens=900,
        answer_tokens=40,
        status=RequestStatus.OK,
        http_status=200,
        worker=1,
    )
    return RequestEvent(RequestKind.DONE, rng.random(), rid, "math", 1, 2, "", rec, 1)


def part_codec(n: int) -> None:
    rng = random.Random(1)
    events = [_event(rng, i) for i in range(n)]
    for name, enc, dec in (
        ("records pickled as themselves", lambda e: e, lambda x: x),
        ("fields as lists (the wire)", W.encode_items, W.decode_items),
    ):
        best = float("inf")
        size = 0
        for _ in range(5):
            t = time.perf_counter()
            body = pickle.dumps(enc(events), protocol=pickle.HIGHEST_PROTOCOL)
            back = dec(pickle.loads(body))
            best = min(best, time.perf_counter() - t)
            size = len(body)
        assert back == events
        print(f"{name:>32}: {1e6 * best / n:.2f} us per event there and back, {size / n:.0f} bytes per event")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["held", "codec", "both"], default="both")
    ap.add_argument("--workers", default="0,1,2", help="senders to compare: 0 = in-process, N = N workers")
    ap.add_argument("--levels", default="1000,2000,3000,4000")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds each held stream lasts")
    ap.add_argument("--interval", type=float, default=0.050, help="seconds between chunks of a stream")
    ap.add_argument("--servers", type=int, default=2, help="SSE server processes sharing the port")
    ap.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="send through Ray actors at ADDRESS (--workers per node); 'cluster': start a local 2-node "
        "cluster (ray.cluster_utils.Cluster; only in a loopback-only network namespace, see above)",
    )
    ap.add_argument("--codec-events", type=int, default=20000)
    args = ap.parse_args(argv)
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; CPUs {os.cpu_count()}", flush=True
    )
    if args.part in ("codec", "both"):
        part_codec(args.codec_events)
    cluster = None
    if args.ray == "cluster":
        import socket

        if [name for _, name in socket.if_nameindex()] != ["lo"]:
            raise SystemExit("--ray cluster runs in a loopback-only network namespace: see the usage above")
        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        args.ray = cluster.address
        args.workers = ",".join(x for x in args.workers.split(",") if x != "0") or "1"
    try:
        if args.part in ("held", "both"):
            part_held(
                [int(x) for x in args.workers.split(",")],
                [int(x) for x in args.levels.split(",")],
                args.hold,
                args.interval,
                args.servers,
                args.ray,
            )
    finally:
        if cluster is not None:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
