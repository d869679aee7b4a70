"""``rllmtop sim serve|profiles`` (also ``python -m rllmtop.sim ...``).

Flags use vLLM's names so one scenario maps to vLLM and to the simulator the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from rllmtop.errors import UserError
from rllmtop.sim.profiles import (
    DEFAULT_PROFILE,
    EngineOptions,
    Profile,
    builtin_profile_names,
    derive,
    load_profile,
    load_profile_file,
    parse_speculative_config,
)
from rllmtop.sim.server import STARTUP_LINE, Faults, ServerOptions, SimServer

__all__ = ["build_parser", "main"]


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1]")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllmtop sim",
        description="The embedded simulated reasoning engine: an OpenAI-compatible server shaped like vLLM.",
        # calibrate reads recordings on the client side (rllmtop.calibrate); `rllmtop` routes it there
        epilog="also: `rllmtop sim calibrate REC.db [REC.db ...] -o profile.toml` fits a profile to recordings "
        "of a real engine, for `serve --profile-file` (`rllmtop sim calibrate --help`)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="serve the simulator over HTTP (vLLM-style flags)")
    g = p.add_argument_group("vLLM flags")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    g.add_argument("--served-model-name", help="model name in /v1/models (default: the profile's)")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (never logged)")
    g.add_argument("--max-num-seqs", type=_pos_int, help="most requests running at once")
    g.add_argument("--max-num-batched-tokens", type=_pos_int, help="token budget per engine step")
    g.add_argument("--gpu-memory-utilization", type=_fraction, help="fraction of GPU memory for vLLM")
    g.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        help="KV-cache dtype",
    )
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prefix caching (default: the profile's, on)",
    )
    g.add_argument(
        "--speculative-config",
        metavar="JSON",
        help='e.g. \'{"method": "ngram", "num_speculative_tokens": 3}\' (+ optional "acceptance_rate")',
    )
    g.add_argument("--quantization", "-q", help="awq, gptq, fp8, int8, ... (sets bytes per weight)")
    g.add_argument("--block-size", type=_pos_int, help="tokens per KV block (default 16)")
    g.add_argument("--num-gpu-blocks-override", type=_pos_int, help="KV blocks, instead of the derived count")
    g.add_argument("--max-model-len", type=_pos_int, help="context length (default: the profile's)")
    g.add_argument(
        "--reasoning-parser",
        metavar="NAME",
        help="default: the profile's (deepseek_r1); none = reasoning inline in content as <think>...</think>",
    )
    s = p.add_argument_group("simulator")
    s.add_argument(
        "--profile", default=None, help=f"built-in profile (default {DEFAULT_PROFILE}; see `profiles`)"
    )
    s.add_argument("--profile-file", metavar="PATH", help='a profile TOML file (may say base = "rllm-7b")')
    s.add_argument("--speed", type=_positive, default=1.0, help="divide every simulated latency by this")
    s.add_argument("--seed", type=int, default=0, help="server seed for every random draw (default 0)")
    s.add_argument(
        "--reasoning-field",
        default="reasoning",
        choices=["reasoning", "reasoning_content"],
        help="delta field for reasoning: reasoning (vLLM >= 0.16) or reasoning_content (SGLang, vLLM <= 0.11)",
    )
    f = p.add_argument_group("fault injection")
    f.add_argument(
        "--fault-error-rate", type=_fraction, default=0.0, help="fraction of requests answered 500"
    )
    f.add_argument("--fault-rate-limit-rate", type=_fraction, default=0.0, help="fraction answered 429")
    f.add_argument("--fault-stall-rate", type=_fraction, default=0.0, help="fraction of streams that stall")
    f.add_argument(
        "--fault-stall-seconds", type=_non_negative, default=5.0, help="stall length (wall seconds)"
    )
    f.add_argument("--fault-drop-rate", type=_fraction, default=0.0, help="fraction of connections dropped")
    f.add_argument("--exit-after", type=_non_negative, metavar="S", help="exit with code 1 after S seconds")

    p = sub.add_parser("profiles", help="list the hardware x model profiles")
    p.add_argument("--profile-file", action="append", default=[], metavar="PATH", help="also show this file")
    p.add_argument("--verbose", "-v", action="store_true", help="show every profile's assumptions")
    return parser


def _profile(args: argparse.Namespace) -> Profile:
    if args.profile_file and args.profile:
        raise UserError("--profile and --profile-file are both set", "use one of them")
    if args.profile_file:
        return load_profile_file(args.profile_file)
    return load_profile(args.profile or DEFAULT_PROFILE)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from parsed ``serve`` arguments (raises UserError on bad values)."""
    spec = parse_speculative_config(args.speculative_config) if args.speculative_config else None
    engine = EngineOptions(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_dtype=args.kv_cache_dtype,
        enable_prefix_caching=args.enable_prefix_caching,
        speculative=spec,
        quantization=args.quantization,
        block_size=args.block_size,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        max_model_len=args.max_model_len,
        seed=args.seed,
    )
    faults = Faults(
        error_rate=args.fault_error_rate,
        rate_limit_rate=args.fault_rate_limit_rate,
        stall_rate=args.fault_stall_rate,
        stall_seconds=args.fault_stall_seconds,
        drop_rate=args.fault_drop_rate,
        exit_after=args.exit_after,
    )
    return ServerOptions(
        profile=_profile(args),
        engine=engine,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        speed=args.speed,
        seed=args.seed,
        reasoning_field=args.reasoning_field,
        reasoning_parser=args.reasoning_parser,
        faults=faults,
        api_key=args.api_key,
    )


async def _serve(options: ServerOptions) -> int:
    server = SimServer(options)
    url = await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    prof = options.profile
    cfg = server.config
    print(
        f"rllmtop sim: profile {prof.name} ({prof.model.name} on {prof.gpu_label}), model {server.model_name!r}, "
        f"KV {cfg.capacity_tokens} tokens ({cfg.num_gpu_blocks} blocks), max_num_seqs {cfg.max_num_seqs}, "
        f"speed {options.speed:g}",
        file=sys.stderr,
    )
    print(STARTUP_LINE.format(url=url), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def _list_profiles(args: argparse.Namespace) -> int:
    profiles = [load_profile(n) for n in builtin_profile_names()]
    profiles += [load_profile_file(p) for p in args.profile_file]
    rows = [("NAME", "GPU", "MODEL", "KV TOKENS", "BLOCKS", "MAX SEQS", "KIND")]
    for prof in profiles:
        _, d = derive(prof)
        rows.append(
            (
                prof.name
                + (
                    " (default)" if prof.name == DEFAULT_PROFILE and not prof.source.endswith(".toml") else ""
                ),
                prof.gpu_label,
                prof.model.name,
                f"{d.kv_tokens:,}",
                f"{d.num_gpu_blocks:,}",
                str(prof.serving.max_num_seqs),
                prof.kind,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    for prof in profiles:
        print(f"{prof.name}: {prof.description}")
        shown = prof.assumptions if args.verbose else prof.assumptions[:3]
        for a in shown:
            print(f"  - {a}")
        if not args.verbose and len(prof.assumptions) > 3:
            print(f"  ... ({len(prof.assumptions) - 3} more with --verbose)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``rllmtop sim ARGS`` calls this with ARGS. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "profiles":
            return _list_profiles(args)
        options = options_from_args(args)
        SimServer(options)  # validate everything before the event loop starts
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(_serve(options))
    except UserError as e:
        print(f"rllmtop sim: {e.what}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (more streamed tokens per core), unless RLLMTOP_LOOP=asyncio."""
    if os.environ.get("RLLMTOP_LOOP", "").strip().lower() not in ("asyncio", "default", "std"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
