"""How many streamed tokens/s the simulator sustains on one core, and how far it lags its schedule.

The server runs as ``python -m rllmtop.sim serve`` pinned to one core; the client (this process,
pinned to another core when there is one) holds N streaming requests open over raw asyncio sockets,
starts a new one whenever one ends, and only counts bytes (no JSON parsing), so it is not the
bottleneck. Figures: streamed tokens/s seen by the client, server CPU-seconds per 1k tokens, the
server's lag behind the model's schedule (``rllmtop_sim_iteration_lag_seconds``, wall seconds) and its
drift (``rllmtop_sim_drift_seconds_total``, model seconds the served loop fell behind and stretched the
model clock by: the amount the latencies a client sees were inflated) over the window.

    python bench/bench_sim.py                       # flat, paced and hog with the defaults below
    python bench/bench_sim.py --mode flat --streams 256 --seconds 10
    python bench/bench_sim.py --mode paced --streams 256 --seconds 20   # speed 1, the default profile
    python bench/bench_sim.py --mode hog --hogs 2   # paced, with 2 busy processes on the server's core
    python bench/bench_sim.py --mode transport      # why not a framework: the same SSE ticks written by
                                                    # rllmtop.sim.http vs an aiohttp StreamResponse
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import orjson

TOKEN_MARK = b'"finish_reason":null,"token_ids"'  # in every token event but the last of a stream
DONE_MARK = b"data: [DONE]"


@dataclass
class Totals:
    tokens: int = 0
    streams_done: int = 0
    bytes: int = 0
    errors: int = 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lag_buckets(text: str) -> list[tuple[float, float]]:
    out = []
    for m in re.finditer(
        r'^rllmtop_sim_iteration_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.MULTILINE
    ):
        out.append((float(m.group(1)), float(m.group(2))))
    return out


def drift_seconds(text: str) -> float | None:
    m = re.search(r"^rllmtop_sim_drift_seconds_total (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Upper bound of the bucket holding quantile q (cumulative counts)."""
    total = buckets[-1][1]
    if total == 0:
        return 0.0
    for le, c in buckets:
        if c >= q * total:
            return le
    return float("inf")


async def http_get(host: str, port: int, path: str) -> bytes:
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await r.read()
    w.close()
    return data.split(b"\r\n\r\n", 1)[1]


async def one_stream(host: str, port: int, body: bytes, totals: Totals) -> None:
    r, w = await asyncio.open_connection(host, port)
    try:
        w.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        tail = b""
        while True:
            data = await r.read(262144)
            if not data:
                totals.errors += 1
                return
            totals.bytes += len(data)
            seg = tail + data
            totals.tokens += seg.count(TOKEN_MARK)
            if DONE_MARK in seg:
                totals.tokens += 1  # the last token event carries its finish_reason
                totals.streams_done += 1
                return
            tail = seg[-(len(TOKEN_MARK) - 1) :]
    finally:
        w.close()


async def drive(host: str, port: int, streams: int, seconds: float, max_tokens: int) -> tuple[Totals, float]:
    totals = Totals()
    stop = time.monotonic() + seconds
    counter = 0

    async def worker(k: int) -> None:
        nonlocal counter
        while time.monotonic() < stop:
            counter += 1
            prompt = f"Problem {counter}: compute $({k} + 3) * (7 + 2) - 4 * (5 + 6) + 2 * 9 - 1$."
            body = orjson.dumps(
                {
                    "model": "bench",
                    "messages": [{"role": "user", "content": prompt}],
                    "stream": True,
                    "max_tokens": max_tokens,
                    "seed": counter,
                }
            )
            await one_stream(host, port, body, totals)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(worker(k)) for k in range(streams)]
    await asyncio.sleep(seconds)
    # count what arrived within the window only
    snapshot = Totals(totals.tokens, totals.streams_done, totals.bytes, totals.errors)
    elapsed = time.monotonic() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return snapshot, elapsed


def start_hogs(n: int, core: int | None) -> list[subprocess.Popen[bytes]]:
    """``n`` busy-looping processes, pinned to ``core``: they take that core's CPU from the server."""
    hogs = []
    for _ in range(n):
        h = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if core is not None:
            os.sched_setaffinity(h.pid, {core})
        hogs.append(h)
    return hogs


def run(
    mode: str, streams: int, seconds: float, speed: float, profile: str, max_tokens: int, hogs: int = 0
) -> dict[str, float]:
    cores = sorted(os.sched_getaffinity(0))
    cmd = [
        sys.executable,
        "-m",
        "rllmtop.sim",
        "serve",
        "--port",
        "0",
        "--speed",
        str(speed),
        "--profile",
        profile,
        "--served-model-name",
        "bench",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    hog_procs: list[subprocess.Popen[bytes]] = []
    try:
        if len(cores) >= 2:
            os.sched_setaffinity(proc.pid, {cores[0]})
            os.sched_setaffinity(0, {cores[1]})
        hog_procs = start_hogs(hogs, cores[0] if len(cores) >= 2 else None)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if m is None:
            raise SystemExit(f"the simulator did not start: {line!r}")
        host, port = m.group(1), int(m.group(2))

        async def main() -> tuple[Totals, float, float, str, str]:
            before = (await http_get(host, port, "/metrics")).decode()
            c0 = cpu_seconds(proc.pid)
            totals, elapsed = await drive(host, port, streams, seconds, max_tokens)
            c1 = cpu_seconds(proc.pid)
            after = (await http_get(host, port, "/metrics")).decode()
            return totals, elapsed, c1 - c0, before, after

        totals, elapsed, cpu, text0, text1 = asyncio.run(main())
    finally:
        for h in hog_procs:
            h.kill()
            h.wait(10)
        proc.terminate()
        proc.wait(10)
    before, after = lag_buckets(text0), lag_buckets(text1)
    d0, d1 = drift_seconds(text0), drift_seconds(text1)
    drift = d1 - d0 if d0 is not None and d1 is not None else float("nan")
    window = [(le, c - b) for (le, c), (_, b) in zip(after, before, strict=True)]
    return {
        "tokens_per_s": totals.tokens / elapsed,
        "streams_done": totals.streams_done,
        "mb_per_s": totals.bytes / elapsed / 1e6,
        "server_cpu_share": cpu / elapsed,
        "server_cpu_ms_per_1k_tokens": 1000 * cpu / max(totals.tokens, 1) * 1000,
        "lag_p50_s": quantile(window, 0.5),
        "lag_p99_s": quantile(window, 0.99),
        "iterations": window[-1][1] if window else 0,
        "errors": totals.errors,
        "drift_s": drift,  # model seconds
        "drift_share": drift / (elapsed * speed),  # of the window's model time
    }


# A server that only streams a fixed ~250-byte SSE event to every open stream per tick (no engine), to
# compare the cost of the HTTP layer itself: rllmtop.sim.http.Connection vs aiohttp's StreamResponse.
_TRANSPORT_SERVER = r"""
import asyncio, sys
EVENT = b'data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1,"model":"m",' \
        b'"choices":[{"index":0,"delta":{"reasoning":" token"},"logprobs":null,"finish_reason":null,' \
        b'"token_ids":null}]}\n\n'
LAST = EVENT.replace(b'"finish_reason":null,"token_ids"', b'"finish_reason":"stop","token_ids"') + b"data: [DONE]\n\n"
N = 2000
kind = sys.argv[1]
streams = []

async def ticker():
    while True:
        await asyncio.sleep(0)
        for s in list(streams):
            s.left -= 1
            if s.left > 0:
                s.send(EVENT)
            else:
                streams.remove(s)
                s.finish(LAST)

class S:
    def __init__(self, send, finish):
        self.left, self.send, self.finish = N, send, finish

async def main():
    loop = asyncio.get_running_loop()
    if kind == "lean":
        from rllmtop.sim.http import Connection
        def handle(req, conn):
            conn.start_stream()
            streams.append(S(conn.write_chunk, conn.end_stream))
        server = await loop.create_server(lambda: Connection(handle, b"server: x\r\n"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        from aiohttp import web
        async def handle(request):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            done = asyncio.Event()
            async def finish(data):
                await resp.write(data)
                done.set()
            # StreamResponse.write is a coroutine: the tick schedules it without awaiting (fastest use)
            streams.append(S(lambda d: loop.create_task(resp.write(d)), lambda d: loop.create_task(finish(d))))
            await done.wait()
            await resp.write_eof()
            return resp
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
    print(f"Starting rllmtop sim server on http://127.0.0.1:{port}", flush=True)
    loop.create_task(ticker())
    await asyncio.Event().wait()

asyncio.run(main())
"""


def run_transport(kind: str, streams: int, seconds: float) -> dict[str, float]:
    cores = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRANSPORT_SERVER, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        if len(cores) >= 2:
            os.sched_setaffinity(proc.pid, {cores[0]})
            os.sched_setaffinity(0, {cores[1]})
        assert proc.stdout is not None
        m = re.search(r"http://([\d.]+):(\d+)", proc.stdout.readline())
        if m is None:
            raise SystemExit("the transport server did not start")
        host, port = m.group(1), int(m.group(2))

        async def main() -> tuple[Totals, float, float]:
            c0 = cpu_seconds(proc.pid)
            totals, elapsed = await drive(host, port, streams, seconds, 0)
            return totals, elapsed, cpu_seconds(proc.pid) - c0

        totals, elapsed, cpu = asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "events_per_s": totals.tokens / elapsed,
        "server_cpu_share": cpu / elapsed,
        "server_cpu_ms_per_1k": 1e6 * cpu / max(totals.tokens, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["flat", "paced", "hog", "both", "transport"], default="both")
    ap.add_argument("--streams", type=int, default=256, help="concurrent streams")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", default="rllm-7b")
    ap.add_argument("--flat-speed", type=float, default=1000.0, help="--speed for the flat-out mode")
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--hogs", type=int, default=2, help="busy processes on the server's core (hog mode)")
    ap.add_argument("--hog-speed", type=float, default=1.0, help="--speed in the hog mode")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}, cores: {len(os.sched_getaffinity(0))}")
    if args.mode == "transport":
        for kind in ("lean", "aiohttp"):
            t = run_transport(kind, args.streams, args.seconds)
            print(
                f"transport {kind:7s} streams={args.streams}: {t['events_per_s']:,.0f} SSE events/s, "
                f"server CPU {t['server_cpu_share']:.0%} of a core, {t['server_cpu_ms_per_1k']:.1f} ms per 1k events"
            )
        return
    modes = ["flat", "paced", "hog"] if args.mode == "both" else [args.mode]
    for mode in modes:
        speed = {"flat": args.flat_speed, "paced": 1.0, "hog": args.hog_speed}[mode]
        hogs = args.hogs if mode == "hog" else 0
        r = run(mode, args.streams, args.seconds, speed, args.profile, args.max_tokens, hogs)
        print(
            f"{mode:5s} speed={speed:g} streams={args.streams}"
            + (f" hogs={hogs}" if hogs else "")
            + f": {r['tokens_per_s']:,.0f} streamed tokens/s "
            f"({r['mb_per_s']:.1f} MB/s, {r['streams_done']} streams done, {r['errors']} errors); "
            f"server CPU {r['server_cpu_share']:.0%} of a core, {r['server_cpu_ms_per_1k_tokens']:.1f} ms per 1k tokens; "
            f"lag p50 <= {r['lag_p50_s'] * 1e3:g} ms, p99 <= {r['lag_p99_s'] * 1e3:g} ms "
            f"over {r['iterations']:.0f} iterations; drift {r['drift_s']:.3f} model s "
            f"({r['drift_share']:.1%} of the window's model time)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
