"""`rllmtop sim calibrate`: it recovers a known simulator profile from a recording of that simulator, the
profile fields it writes load in the simulator and change what it derives, and bad input is one line."""

from __future__ import annotations

import asyncio
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rllmtop.calibrate import _calibrate, _censored_lognormal, _reduce, calibrate, main, profile_toml, report
from rllmtop.cli import sim_stand_in
from rllmtop.commands import build_session
from rllmtop.errors import UserError
from rllmtop.events import (
    MetricSample,
    RequestRecord,
    RequestStatus,
    SessionInfo,
    SessionState,
    encode_gaps,
)
from rllmtop.record.writer import Recorder
from rllmtop.scenario import load_scenario
from rllmtop.sim.engine import Engine, EngineConfig, Request
from rllmtop.sim.outputs import OutputPlan
from rllmtop.sim.profiles import EngineOptions, build_engine_config, derive, load_profile, load_profile_file

# A slow "GPU" (steps of ~0.1 model seconds, so a time-lapse at speed 10 streams few enough chunks for a loaded
# machine) whose knee (~19 scheduled tokens) lies between its decode steps (at most 16 requests: on the
# weight-pass floor) and its prefill steps (a batch plus a prompt: compute-bound), so every run has both,
# with a small KV cache and short outputs per tier.
TRUTH = """base = "rllm-7b"
name = "truth"
[model]
max_model_len = 4096
[serving]
max_num_seqs = 16
num_gpu_blocks = 600
[timing]
bandwidth_efficiency = 0.1
mfu = 0.01
t0_ms = 2.0
beta_us = 150.0
tp_latency_us = 10.0
[outputs]
runaway_probability = 0.0
wrong_length_factor = 1.0
[outputs.easy]
reasoning_median = 150
reasoning_sigma = 0.5
answer_median = 40
answer_sigma = 0.3
[outputs.hard]
reasoning_median = 260
reasoning_sigma = 0.4
answer_median = 60
answer_sigma = 0.3
"""
SPEED = 10  # the simulator runs 10x faster than the wall clock the recording is on
SCENARIO = """name = "calibrate-truth"
seed = 7
[engine]
kind = "url"
url = "{url}"
[arrival]
process = "gamma"
rate = 40
burstiness = 0.5
[load]
num_prompts = 80
grace_period = 60
[[classes]]
name = "easy"
max_tokens = 1000
prompts = {{ builtin = "math-easy" }}
[[classes]]
name = "hard"
max_tokens = 250
prompts = {{ builtin = "math-hard" }}
"""


@pytest.fixture(scope="module")
def truth_recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A recording of the simulator serving TRUTH at speed 10 (its own process), and the profile file."""
    d = tmp_path_factory.mktemp("calibrate")
    prof = d / "truth.toml"
    prof.write_text(TRUTH, encoding="utf-8")
    argv = [sys.executable, "-m", "rllmtop.sim", "serve", "--port", "0", "--speed", str(SPEED), "--seed", "3"]
    proc = subprocess.Popen(
        [*argv, "--profile-file", str(prof)],
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
        sc = d / "scenario.toml"
        sc.write_text(SCENARIO.format(url=url), encoding="utf-8")
        db = d / "truth.db"
        session = build_session(load_scenario(str(sc), {}), mode="headless", record=db, scrape_interval=0.05)
        outcome = asyncio.run(session.run())
        assert outcome.state is SessionState.DONE, outcome.detail
    finally:
        proc.kill()
        proc.wait(10)
    yield db, prof


def _step(cfg: EngineConfig, b: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """The simulator's decode step time at batch b and total context ctx."""
    return cfg.t0 + cfg.beta * b + np.maximum(cfg.t_weights, cfg.a * b) + cfg.c * ctx


def _too_busy(warning: str) -> bool:
    """The simulator fell behind its schedule, or client delay touched more than a quarter of the requests."""
    if "the simulator" in warning:
        return True
    m = re.search(r"(\d+) of (\d+) requests were touched", warning)
    return m is not None and int(m.group(1)) > 0.25 * int(m.group(2))


def test_calibrate_recovers_the_simulators_own_profile(
    truth_recording: tuple[Path, Path], tmp_path: Path
) -> None:
    db, prof = truth_recording
    cal = calibrate([db], stand_in=sim_stand_in())
    text = "\n".join(report(cal))
    assert all(f"warning: {w}" in text for w in cal.trust)  # a trust warning is said first, in the report
    if any(_too_busy(w) for w in cal.trust):  # the recording's times are not the simulator's own
        pytest.skip(f"the truth recording cannot be trusted on this busy machine: {cal.trust[0]}")
    out = tmp_path / "fitted.toml"
    out.write_text(profile_toml(cal, "fitted"), encoding="utf-8")
    truth = build_engine_config(load_profile_file(prof))
    fitted = build_engine_config(load_profile_file(out))
    assert cal.steps is not None, text
    # what the run identifies: the floor of a decode step (t0 + t_weights) within 20%, and the per-token
    # cost of the prefill steps within 35% (only prefill steps leave the floor, and the intercept of those
    # trades against it); how the floor splits into t0 and t_weights, and beta, c and p, it cannot tell
    floor, true_floor = fitted.t0 + fitted.t_weights, truth.t0 + truth.t_weights
    assert floor == pytest.approx(true_floor, rel=0.2), text
    assert fitted.a == pytest.approx(truth.a, rel=0.35), text
    # the decode step time over the batch sizes the run reached (t0, beta and c trade off with each other
    # because context grows with the batch): within 15%
    b = np.arange(2.0, 17.0)
    ctx = b * 250.0
    err = _step(fitted, b, ctx) / _step(truth, b, ctx) - 1.0
    assert np.max(np.abs(err)) <= 0.15, (err, text)
    # per request, the fitted model predicts the decode time it saw
    assert float(np.median(np.abs(cal.decode_residuals))) <= 0.05, text
    # KV capacity exactly (blocks from the served cache info, block size from the usage gauge)
    assert (fitted.num_gpu_blocks, fitted.block_size) == (600, 16), text
    # output lengths: easy is never cut (max_tokens 1000), hard about half the time (max_tokens 400: censored)
    tiers = load_profile_file(out).outputs.tiers
    assert tiers["easy"].reasoning_median == pytest.approx(150, rel=0.15), text
    assert tiers["easy"].reasoning_sigma == pytest.approx(0.5, abs=0.15), text
    assert tiers["easy"].answer_median == pytest.approx(40, rel=0.15), text
    assert tiers["hard"].reasoning_median == pytest.approx(260, rel=0.2), text
    hard = next(t for t in cal.tiers if t.tier == "hard")
    assert hard.reasoning.censored > 10 and hard.reasoning.how == "mle"
    # tiers no class declared keep the base's
    assert tiers["medium"] == load_profile("rllm-7b").outputs.tiers["medium"]
    # prompts: the simulator's own tokenizer is the stand-in, so the engine's tokens per stand-in token are
    # 1, on every prompt rebuilt from the recorded workload (a scaled engine: the test below)
    assert cal.prompts.requests == 80 and cal.prompts.scale == 1.0, text
    assert "prompt_token_scale 1 (80 requests)" in text
    # and the report names the speed conversion and what it left out
    assert "speed 10" in text and "not fitted" in text


SCALED = """name = "calibrate-prompts"
seed = 5
[engine]
kind = "sim"
profile = "{profile}"
[arrival]
process = "gamma"
rate = 200
burstiness = 0.5
[load]
num_prompts = 24
[[classes]]
name = "easy"
max_tokens = 4
prompts = {{ builtin = "math-easy" }}
[[classes]]
name = "terse"
max_tokens = 4
thinking = false
system = "Answer with the number only."
prompts = {{ builtin = "math-hard" }}
"""


@pytest.fixture(scope="module")
def scaled_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short recording of the simulator counting prompts at prompt_token_scale = 1.5 (an engine whose
    tokenizer makes 1.5 tokens of each stand-in token), over HTTP, with and without a system prompt."""
    d = tmp_path_factory.mktemp("scaled")
    prof = d / "scaled.toml"
    prof.write_text(
        'base = "rllm-7b"\nname = "scaled"\n[model]\nprompt_token_scale = 1.5\n', encoding="utf-8"
    )
    sc = d / "scenario.toml"
    sc.write_text(SCALED.format(profile=prof), encoding="utf-8")
    db = d / "scaled.db"
    outcome = asyncio.run(build_session(load_scenario(str(sc), {}), mode="headless", record=db).run())
    assert outcome.state is SessionState.DONE, outcome.detail
    return db


def test_calibrate_fits_the_engines_prompt_length(scaled_recording: Path, tmp_path: Path) -> None:
    # each prompt of N stand-in tokens had floor(1.5 N): the fit is the ratio of the sums, so within 2% and
    # never above 1.5; the profile carries it, and the simulator serving that profile counts as the engine did
    cal = calibrate([scaled_recording], stand_in=sim_stand_in())
    text = "\n".join(report(cal))
    assert cal.prompts.requests == 24, text
    assert cal.prompts.scale is not None and 1.47 <= cal.prompts.scale <= 1.5, text
    assert re.search(r"prompt_token_scale 1\.4\d* \(24 requests\)", text), text
    out = tmp_path / "fitted.toml"
    out.write_text(profile_toml(cal, "fitted"), encoding="utf-8")
    assert load_profile_file(out).model.prompt_token_scale == pytest.approx(cal.prompts.scale, rel=1e-5)


def test_prompts_that_cannot_be_rebuilt_leave_the_scale_unfitted_and_say_why(
    scaled_recording: Path, tmp_path: Path
) -> None:
    import dataclasses

    from rllmtop.calibrate import _fit_prompts, _load

    rec = _load(str(scaled_recording))
    assert rec.provenance is not None
    stand_in = sim_stand_in()
    assert _fit_prompts([rec], stand_in, reasons=True).scale == pytest.approx(1.5, rel=0.02)
    # rendered without the reasoning template's open <think>, the stand-in counts differ: the flag matters
    assert (
        _fit_prompts([rec], stand_in, reasons=False).scale
        != _fit_prompts([rec], stand_in, reasons=True).scale
    )
    assert "no stand-in" in (_fit_prompts([rec], None, reasons=True).why or "")
    bare = dataclasses.replace(rec, provenance=None)
    fit = _fit_prompts([bare], stand_in, reasons=True)
    assert fit.scale is None and "holds no workload" in fit.why
    # a prompt file that is gone: named
    gone = dataclasses.replace(
        rec.provenance,
        source=str(tmp_path / "s.toml"),
        workload=rec.provenance.workload.replace('{"builtin":"math-easy"}', '{"file":"gone.jsonl"}'),
    )
    fit = _fit_prompts([dataclasses.replace(rec, provenance=gone)], stand_in, reasons=True)
    assert fit.scale is None and "gone.jsonl" in fit.why, fit.why
    cal = _calibrate([bare], "rllm-7b", stand_in)
    assert cal.prompts.scale is None
    assert any(n.startswith("prompt_token_scale: not fitted") for n in cal.notes)
    assert "prompt_token_scale" not in profile_toml(cal)


def test_the_cli_writes_a_profile_the_simulator_serves(
    truth_recording: tuple[Path, Path], tmp_path: Path
) -> None:
    db, _ = truth_recording
    out = tmp_path / "mine.toml"
    p = subprocess.run(
        [sys.executable, "-m", "rllmtop", "sim", "calibrate", str(db), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "residual" in p.stdout and f"wrote {out}" in p.stdout
    assert p.stderr == ""
    prof = load_profile(str(out))  # a path ending in .toml, as a scenario's [engine] profile gives it
    assert prof.name == "mine" and prof.timing.fitted is not None
    p = subprocess.run(
        [sys.executable, "-m", "rllmtop", "sim", "profiles", "--profile-file", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "mine" in p.stdout, p.stderr
    # an existing output is not overwritten without --force
    p = subprocess.run(
        [sys.executable, "-m", "rllmtop", "sim", "calibrate", str(db), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "exists" in p.stderr and "--force" in p.stderr


# ---------------------------------------------------------------------------------------------- bad input


def _cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def _empty_recording(path: Path) -> None:
    rec = Recorder(path, SessionInfo(session_id="s", started_at=0.0, mode="headless", engine_kind="vllm"))
    rec.close(SessionState.DONE)


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda p: None, "no such recording"),
        (lambda p: p.write_text("hello"), "not an rllmtop recording"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200), "damaged"),
        (_empty_recording, "no request finished with token timings"),
    ],
    ids=["missing", "foreign", "corrupt", "empty"],
)
def test_a_bad_recording_is_one_clear_line(
    make: object, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rec.db"
    make(path)  # type: ignore[operator]
    code, err = _cli(str(path), "-o", str(tmp_path / "out.toml"), capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert expect in lines[0] and str(path) in lines[0], err
    assert len(lines) == 2 and lines[1].startswith("  hint: ")
    assert "Traceback" not in err
    assert not (tmp_path / "out.toml").exists()


def test_bad_arguments_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "rec.db"
    _empty_recording(rec)
    code, err = _cli(str(rec), "-o", str(tmp_path / "out.json"), capsys=capsys)
    assert code == 2 and "must end in .toml" in err
    code, err = _cli(str(rec), "-o", str(tmp_path / "o.toml"), "--base", "../etc/x", capsys=capsys)
    assert code == 2 and "not a profile name" in err


def test_a_profile_the_simulator_refuses_is_reported(
    truth_recording: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = truth_recording

    def refuse(path: Path) -> None:
        raise UserError(f"{path}: nope", "fix it")

    code = main([str(db), "-o", str(tmp_path / "o.toml")], verify=refuse)
    err = capsys.readouterr().err
    assert code == 2 and "the simulator refuses it" in err and "nope" in err


# ---------------------------------------------------------------------------------------------- fuzz


def _random_records(rng: random.Random) -> tuple[list[RequestRecord], list[MetricSample]]:
    """Requests and samples as a damaged or odd recording might hold them."""
    recs = []
    t = 0.0
    for i in range(rng.randint(0, 40)):
        t += rng.expovariate(5.0)
        n = rng.randint(0, 60)
        gaps = [rng.choice([0, rng.randint(1, 100), rng.randint(100, 50_000), 0xFFFFFFFF]) for _ in range(n)]
        tpc = [rng.randint(0, 4) for _ in range(n + 1)] if rng.random() < 0.3 else None
        blob = encode_gaps(gaps, tpc) if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(9))
        ftt = t + rng.choice([0.0, rng.uniform(0, 2), -1.0, math.nan])
        done = ftt + rng.choice([sum(gaps) * 1e-6, rng.uniform(0, 5), math.inf])
        recs.append(
            RequestRecord(
                rid=i,
                cls=rng.choice(["a", "b"]),
                difficulty=rng.choice(["easy", "hard", "", "weird"]),
                t_sent=t,
                t_first_token=ftt,
                t_done=done,
                prompt_tokens=rng.choice([None, 0, 50, 10**9]),
                reasoning_tokens=rng.choice([0, 1, 300, 10**6]),
                answer_tokens=rng.choice([0, 5, 80]),
                finish_reason=rng.choice(["stop", "length", None]),
                status=rng.choice([RequestStatus.OK, RequestStatus.OK, RequestStatus.ERROR]),
                correct=rng.choice([None, True, False]),
                gaps=blob,
            )
        )
    samples = [
        MetricSample(
            rng.uniform(0, t + 1),
            rng.choice(["kv_cache_usage", "requests_running", "kv_total_blocks", "sim_speed"]),
            rng.choice([0.0, 0.5, 1.0, 3.0, 24.0, -1.0, math.nan, math.inf]),
        )
        for _ in range(rng.randint(0, 50))
    ]
    return recs, samples


def test_odd_recordings_give_a_profile_or_a_user_error(tmp_path: Path) -> None:
    """Seeded random requests and samples: calibrate either writes a profile the simulator loads or says
    why not; it never crashes."""
    rng = random.Random(1616)
    fitted = 0
    for case in range(200):
        recs, samples = _random_records(rng)
        info = SessionInfo(session_id=str(case), started_at=0.0, mode="headless", engine_kind="vllm")
        try:
            cal = _calibrate([_reduce(f"case{case}", info, recs, samples)], "rllm-7b")
            report(cal)
            path = tmp_path / f"case{case}.toml"
            path.write_text(profile_toml(cal), encoding="utf-8")
            derive(load_profile_file(path))
            fitted += 1
        except UserError as e:
            assert e.what and "\n" not in e.what, e.what
    assert fitted >= 20  # the generator is not all garbage


# ---------------------------------------------------------------------------------------------- profile


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_fitted_timing_replaces_the_derived_terms(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        'base = "rllm-7b"\nname = "f"\n[timing.fitted]\nt0_ms = 1.5\nper_seq_us = 20\nweights_ms = 3\n'
        "per_token_us = 40\nper_context_token_ns = 7\nper_pair_ps = 900\nadmit_delay_ms = 25\n",
    )
    cfg = build_engine_config(load_profile_file(p))
    assert (cfg.t0, cfg.beta, cfg.t_weights, cfg.a) == pytest.approx((1.5e-3, 20e-6, 3e-3, 40e-6))
    assert (cfg.c, cfg.p, cfg.admit_delay) == pytest.approx((7e-9, 900e-12, 25e-3))
    # what the options change in the hardware model scales the fitted numbers: fp8 KV halves the KV read
    fp8 = build_engine_config(load_profile_file(p), EngineOptions(kv_cache_dtype="fp8"))
    assert fp8.c == pytest.approx(cfg.c / 2) and fp8.t_weights == pytest.approx(cfg.t_weights)
    # a partial table keeps the derived values of what it leaves out
    p = _write(tmp_path, 'base = "rllm-7b"\nname = "f"\n[timing.fitted]\nt0_ms = 1.5\n')
    part = build_engine_config(load_profile_file(p))
    base = build_engine_config(load_profile("rllm-7b"))
    assert part.t0 == pytest.approx(1.5e-3)
    assert (part.a, part.c, part.t_weights, part.beta, part.admit_delay) == (
        base.a,
        base.c,
        base.t_weights,
        base.beta,
        0.0,
    )


def test_measured_kv_blocks_replace_the_memory_derivation(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        'base = "rllm-7b"\nname = "k"\n[model]\nmax_model_len = 2048\n[serving]\nnum_gpu_blocks = 300\n',
    )
    prof = load_profile_file(p)
    assert build_engine_config(prof).num_gpu_blocks == 300
    # an fp8 KV cache holds twice the tokens; --block-size 32 halves the blocks; the override still wins
    assert build_engine_config(prof, EngineOptions(kv_cache_dtype="fp8")).num_gpu_blocks == 600
    assert build_engine_config(prof, EngineOptions(block_size=32)).num_gpu_blocks == 150
    assert build_engine_config(prof, EngineOptions(num_gpu_blocks_override=200)).num_gpu_blocks == 200
    # a capacity below max_model_len is refused, as for a derived one
    p = _write(tmp_path, 'base = "rllm-7b"\nname = "k"\n[serving]\nnum_gpu_blocks = 300\n')
    with pytest.raises(UserError, match="fewer than max_model_len"):
        build_engine_config(load_profile_file(p))


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("[timing.fitted]\nt0_msec = 1\n", "unknown field timing.fitted.t0_msec"),
        ("[timing.fitted]\nt0_ms = -1\n", "out of range"),
        ("[timing.fitted]\nt0_ms = 'fast'\n", "is not a number"),
        ("[timing]\nfitted = 3\n", r"\[timing.fitted\] must be a table"),
        ("[serving]\nnum_gpu_blocks = 0\n", "out of range"),
        ("[serving]\nnum_gpu_blocks = 2.5\n", "not an integer"),
    ],
)
def test_bad_measured_fields_are_named(tmp_path: Path, table: str, match: str) -> None:
    p = _write(tmp_path, f'base = "rllm-7b"\nname = "b"\n{table}')
    with pytest.raises(UserError, match=match):
        load_profile_file(p)


def test_admit_delay_holds_a_request_back_from_the_scheduler() -> None:
    plan = OutputPlan([1, 2, 3], 0, False, "stop", "easy", "1", "1", True, 0, 3)
    for delay in (0.0, 0.05):
        eng = Engine(EngineConfig(num_gpu_blocks=64, admit_delay=delay))
        req = Request("r", list(range(10)), plan, 16)
        eng.add(req, 1.0)
        step = eng.step(1.0)
        assert step.start == pytest.approx(1.0 + delay)
        assert req.t_first_scheduled == pytest.approx(1.0 + delay)
        while eng.has_work:
            eng.step(eng.now)
        assert req.t_first_token is not None and req.t_first_token - req.t_arrival >= delay


def test_length_fits_are_finite_on_degenerate_lengths() -> None:
    """Identical lengths (no spread) and lengths almost all cut by max_tokens have no finite optimum: the
    fit stays bounded (this overflowed before the bounds)."""
    same = _censored_lognormal(np.full(10_000, 250.0), np.zeros(10_000, dtype=bool), 0)
    assert same.median == pytest.approx(250, rel=0.01) and same.sigma is not None and same.sigma <= 0.02
    x = np.full(50, 160.0)
    x[:5] = [20, 40, 60, 80, 100]
    cut = x == 160.0
    mostly_cut = _censored_lognormal(x, cut, 0)
    assert mostly_cut.median is not None and math.isfinite(mostly_cut.median) and mostly_cut.median > 160
    # a lognormal sample is recovered, with a third of it censored
    rng = np.random.default_rng(3)
    draw = np.round(300 * np.exp(0.6 * rng.standard_normal(4000)))
    cap = np.minimum(draw, 400.0)
    fit = _censored_lognormal(np.maximum(cap, 1), draw >= 400, 0)
    assert fit.median == pytest.approx(300, rel=0.05) and fit.sigma == pytest.approx(0.6, rel=0.08)
