"""Client CPU per 1,000 streamed SSE chunks: rllmtop's client beside the usual Python options.

    python bench/bench_client.py                       # all clients, flat + paced (+ many for the fast ones)
    python bench/bench_client.py --clients rllmtop,vllm-aiohttp --modes many --repeats 1

A minimal vLLM-shaped SSE server (bench/sse_server.py) runs in its own process pinned to CPU 1; each
(client, mode, repeat) runs in a fresh worker process pinned to CPU 0, so imports and allocator state do not
leak between runs. Figures are medians over repeats. Clients:

- ``rllmtop``: rllmtop.workload.http + .sse (asyncio BufferedProtocol, chunked + SSE + orjson in the read callback)
- ``vllm-aiohttp``: aiohttp streamed the way ``vllm bench serve`` does (line iteration, strip, json.loads)
- ``httpx``: plain httpx.AsyncClient, ``aiter_lines`` + json.loads
- ``httpx-lean``: httpx with a custom transport over asyncio streams, raw bytes fed to rllmtop's SSE parser
- ``asyncio-streams``: asyncio StreamReader + rllmtop's SSE parser (no Protocol)

Modes: ``flat`` (4 streams, 4 events per server write, as fast as the client reads), ``paced`` (64 streams,
one chunk per 10 ms), ``many`` (1,000 streams, one chunk per 50 ms; delivery lag = receive time minus the
server's write time stamped in each chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODES: dict[str, dict[str, Any]] = {
    "flat": {"streams": 4, "n": 20000, "interval": 0.0, "per_write": 4, "stamp": False},
    "paced": {"streams": 64, "n": 300, "interval": 0.010, "per_write": 1, "stamp": True},
    "many": {"streams": 1000, "n": 100, "interval": 0.050, "per_write": 1, "stamp": True},
}
CLIENTS = ("rllmtop", "vllm-aiohttp", "httpx", "httpx-lean", "asyncio-streams")


# ============================================================================================== clients


def _lags(stamps: list[float], recv: list[float]) -> list[float]:
    return [r - s for s, r in zip(stamps, recv, strict=False)]


async def run_rllmtop(url: str, spec: dict[str, Any]) -> tuple[int, list[float], int]:
    import orjson

    from rllmtop.workload.http import HttpClient
    from rllmtop.workload.sse import ChatStream

    client = HttpClient(url)
    body = orjson.dumps({"model": "bench", "stream": True, "bench": spec})
    lags: list[float] = []
    total = 0
    errors = 0

    async def one(delay: float) -> None:
        nonlocal total, errors
        await asyncio.sleep(delay)
        st = ChatStream(thinking=False, keep_answer=spec["stamp"])
        await client.post_stream(client.request_bytes("/v1/chat/completions", body), st)
        st.finish(time.monotonic())
        if st.error:
            errors += 1
        total += st.chunks
        if spec["stamp"] and st.t_first_token is not None:
            recv = [st.t_first_token]
            for g in st.gaps:
                recv.append(recv[-1] + g * 1e-6)
            stamps = [float(x) for x in st.answer_text().split(";") if x]
            lags.extend(_lags(stamps, recv))

    await asyncio.gather(*(one(_stagger(i, spec)) for i in range(spec["streams"])))
    client.close()
    return total, lags, errors


def _stagger(i: int, spec: dict[str, Any]) -> float:
    """Spread paced stream starts over one interval so ticks are not all aligned."""
    return (i % 50) * spec["interval"] / 50 if spec["interval"] else 0.0


async def run_vllm_aiohttp(url: str, spec: dict[str, Any]) -> tuple[int, list[float], int]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
    lags: list[float] = []
    total = 0
    errors = 0
    payload = {"model": "bench", "stream": True, "bench": spec}
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True) as session:

        async def one(delay: float) -> None:
            nonlocal total, errors
            await asyncio.sleep(delay)
            generated_text = ""
            itl: list[float] = []
            ttft = 0.0
            st = time.perf_counter()
            most_recent = st
            recv: list[float] = []
            async with session.post(url + "/v1/chat/completions", json=payload) as response:
                if response.status != 200:
                    errors += 1
                    return
                async for chunk_bytes in response.content:
                    chunk_bytes = chunk_bytes.strip()
                    if not chunk_bytes:
                        continue
                    chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                    if chunk != "[DONE]":
                        timestamp = time.perf_counter()
                        data = json.loads(chunk)
                        if choices := data.get("choices"):
                            content = choices[0]["delta"].get("content")
                            if ttft == 0.0:
                                ttft = timestamp - st
                            else:
                                itl.append(timestamp - most_recent)
                            if content:
                                generated_text += content
                                recv.append(timestamp)
                        most_recent = timestamp
            total += len(recv)
            if spec["stamp"]:
                stamps = [float(x) for x in generated_text.split(";") if x]
                lags.extend(_lags(stamps, recv))

        await asyncio.gather(*(one(_stagger(i, spec)) for i in range(spec["streams"])))
    return total, lags, errors


async def run_httpx(url: str, spec: dict[str, Any]) -> tuple[int, list[float], int]:
    import httpx

    lags: list[float] = []
    total = 0
    errors = 0
    body = json.dumps({"model": "bench", "stream": True, "bench": spec})
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def one(delay: float) -> None:
            nonlocal total, errors
            await asyncio.sleep(delay)
            text = []
            recv: list[float] = []
            async with client.stream("POST", url + "/v1/chat/completions", content=body) as r:
                if r.status_code != 200:
                    errors += 1
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    if payload == "[DONE]":
                        break
                    now = time.monotonic()
                    d = json.loads(payload)
                    if d.get("choices"):
                        c = d["choices"][0]["delta"].get("content")
                        if c:
                            text.append(c)
                            recv.append(now)
            total += len(recv)
            if spec["stamp"]:
                stamps = [float(x) for x in "".join(text).split(";") if x]
                lags.extend(_lags(stamps, recv))

        await asyncio.gather(*(one(_stagger(i, spec)) for i in range(spec["streams"])))
    return total, lags, errors


def _dechunk_factory() -> Any:
    """A chunked-encoding decoder keeping state across blocks (for the stream-based clients)."""
    state = {"pending": b"", "need": 0, "done": False}

    def feed(data: bytes) -> bytes:
        buf = state["pending"] + data
        pos, n, need, out = 0, len(buf), state["need"], []
        while True:
            if need > 0:
                take = min(n - pos, need)
                out.append(buf[pos : pos + take])
                pos += take
                need -= take
                if need:
                    break
                need = -1
            if need == -1:
                if n - pos < 2:
                    break
                pos += 2
                need = 0
            j = buf.find(b"\r\n", pos)
            if j < 0:
                break
            size = int(buf[pos:j], 16)
            pos = j + 2
            if size == 0:
                state["done"] = True
                pos = n
                break
            need = size
        state["pending"], state["need"] = buf[pos:], need
        return b"".join(out)

    return feed, state


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return await asyncio.open_connection(p.hostname, p.port, limit=1 << 20)


def _request_bytes(url: str, body: bytes) -> bytes:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (p.netloc.encode(), len(body), body)
    )


async def run_asyncio_streams(url: str, spec: dict[str, Any]) -> tuple[int, list[float], int]:
    import orjson

    from rllmtop.workload.sse import ChatStream

    body = orjson.dumps({"model": "bench", "stream": True, "bench": spec})
    lags: list[float] = []
    total = 0

    async def one(delay: float) -> None:
        nonlocal total
        await asyncio.sleep(delay)
        reader, writer = await _open(url)
        writer.write(_request_bytes(url, body))
        await reader.readuntil(b"\r\n\r\n")
        feed, state = _dechunk_factory()
        st = ChatStream(thinking=False, keep_answer=spec["stamp"])
        while not state["done"]:
            data = await reader.read(262144)
            if not data:
                break
            st.feed(feed(data), time.monotonic())
        writer.close()
        st.finish(time.monotonic())
        total += st.chunks
        if spec["stamp"] and st.t_first_token is not None:
            recv = [st.t_first_token]
            for g in st.gaps:
                recv.append(recv[-1] + g * 1e-6)
            lags.extend(_lags([float(x) for x in st.answer_text().split(";") if x], recv))

    await asyncio.gather(*(one(_stagger(i, spec)) for i in range(spec["streams"])))
    return total, lags, 0


async def run_httpx_lean(url: str, spec: dict[str, Any]) -> tuple[int, list[float], int]:
    import httpx
    import orjson

    from rllmtop.workload.sse import ChatStream

    class _Body(httpx.AsyncByteStream):
        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reader, self.writer = reader, writer

        async def __aiter__(self):  # type: ignore[override]
            feed, state = _dechunk_factory()
            while not state["done"]:
                data = await self.reader.read(262144)
                if not data:
                    break
                out = feed(data)
                if out:
                    yield out

        async def aclose(self) -> None:
            self.writer.close()

    class LeanTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            reader, writer = await _open(str(request.url))
            body = await request.aread()
            writer.write(_request_bytes(url, body))
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = [tuple(x.split(": ", 1)) for x in lines[1:] if ": " in x]
            return httpx.Response(status, headers=headers, stream=_Body(reader, writer))

    body = orjson.dumps({"model": "bench", "stream": True, "bench": spec})
    lags: list[float] = []
    total = 0
    async with httpx.AsyncClient(transport=LeanTransport(), timeout=None) as client:

        async def one(delay: float) -> None:
            nonlocal total
            await asyncio.sleep(delay)
            st = ChatStream(thinking=False, keep_answer=spec["stamp"])
            async with client.stream("POST", url + "/v1/chat/completions", content=body) as r:
                async for raw in r.aiter_raw():
                    st.feed(raw, time.monotonic())
            st.finish(time.monotonic())
            total += st.chunks
            if spec["stamp"] and st.t_first_token is not None:
                recv = [st.t_first_token]
                for g in st.gaps:
                    recv.append(recv[-1] + g * 1e-6)
                lags.extend(_lags([float(x) for x in st.answer_text().split(";") if x], recv))

        await asyncio.gather(*(one(_stagger(i, spec)) for i in range(spec["streams"])))
    return total, lags, 0


RUNNERS = {
    "rllmtop": run_rllmtop,
    "vllm-aiohttp": run_vllm_aiohttp,
    "httpx": run_httpx,
    "httpx-lean": run_httpx_lean,
    "asyncio-streams": run_asyncio_streams,
}


# ============================================================================================= harness


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def worker(client: str, mode: str, url: str) -> dict[str, Any]:
    spec = dict(MODES[mode])
    streams = spec.pop("streams")
    spec["streams"] = streams
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {0})
    import gc

    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    total, lags, errors = asyncio.run(RUNNERS[client](url, spec))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    expected = streams * spec["n"]
    return {
        "client": client,
        "mode": mode,
        "chunks": total,
        "expected": expected,
        "errors": errors,
        "cpu_s": cpu,
        "wall_s": wall,
        "ms_per_1k": cpu / max(total, 1) * 1e6,  # s per chunk * 1e6 = ms per 1,000 chunks
        "cpu_util": cpu / wall if wall else None,
        "lag_p50_ms": None if not lags else 1000 * (_pct(lags, 50) or 0),
        "lag_p99_ms": None if not lags else 1000 * (_pct(lags, 99) or 0),
        "lag_max_ms": None if not lags else 1000 * max(lags),
    }


def _start_server(cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, str(HERE / "sse_server.py"), "--port", "0"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"bench server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--modes", default="flat,paced,many")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--many-clients", default="rllmtop,vllm-aiohttp", help="clients run in the 'many' mode")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for worker processes (e.g. malloc)")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON lines too")
    ap.add_argument("--worker", nargs=3, metavar=("CLIENT", "MODE", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)), flush=True)
        return 0
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    proc, url = _start_server(1 if ncpu > 1 else None)
    env = dict(os.environ)
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    rows: list[dict[str, Any]] = []
    try:
        print(
            f"server {url} (pid {proc.pid}); load average {os.getloadavg()[0]:.2f}; cpus {ncpu}", flush=True
        )
        for mode in args.modes.split(","):
            clients = args.clients.split(",")
            if mode == "many":
                clients = [c for c in clients if c in args.many_clients.split(",")]
            for client in clients:
                runs = []
                for _ in range(args.repeats if mode != "many" else max(1, args.repeats // 3)):
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", client, mode, url],
                        capture_output=True,
                        text=True,
                        env=env,
                        timeout=600,
                    )
                    if out.returncode != 0:
                        print(f"{client}/{mode} failed: {out.stderr[-500:]}", file=sys.stderr)
                        continue
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                if not runs:
                    continue
                med = {
                    k: statistics.median([r[k] for r in runs if r[k] is not None] or [0])
                    for k in ("ms_per_1k", "cpu_util", "wall_s")
                }
                lag50 = [r["lag_p50_ms"] for r in runs if r["lag_p50_ms"] is not None]
                lag99 = [r["lag_p99_ms"] for r in runs if r["lag_p99_ms"] is not None]
                row = {
                    "client": client,
                    "mode": mode,
                    **med,
                    "lag_p50_ms": statistics.median(lag50) if lag50 else None,
                    "lag_p99_ms": statistics.median(lag99) if lag99 else None,
                    "chunks": runs[0]["chunks"],
                    "expected": runs[0]["expected"],
                    "errors": sum(r["errors"] for r in runs),
                    "runs": len(runs),
                }
                rows.append(row)
                print(
                    f"{mode:6s} {client:16s} {row['ms_per_1k']:7.1f} ms CPU/1k chunks  "
                    f"CPU {100 * row['cpu_util']:5.1f}%  wall {row['wall_s']:6.2f} s  "
                    f"lag p50/p99 {_fmt(row['lag_p50_ms'])}/{_fmt(row['lag_p99_ms'])} ms  "
                    f"chunks {row['chunks']}/{row['expected']}  errors {row['errors']}  (median of {len(runs)})",
                    flush=True,
                )
                if args.json:
                    print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
