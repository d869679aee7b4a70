"""The ``rllmtop`` command. Parses arguments and calls one core function per subcommand; no logic here.

rllmtop                              the default scenario on the embedded simulator, in the TUI
rllmtop run SCENARIO [--headless]    run a scenario (TUI unless --headless)
rllmtop attach URL [URL ...]         monitor running vLLM/SGLang servers (load only with --scenario)
rllmtop launch vllm|sglang MODEL     launch an engine, monitor it, tear it down
rllmtop replay FILE                  replay a recording in the TUI
rllmtop verify FILE                  check every row of a recording (checksums, values, row counts)
rllmtop export FILE --format F       requests, samples and a per-second timeline as CSV/JSONL/Parquet
rllmtop report FILE                  figures and ASU tables from a recording
rllmtop compare A.db B.db ...        side-by-side ASU tables, significance tests, overlaid figures
rllmtop sweep SCENARIO --rates ...   one recorded run per load level; the highest meeting the SLOs
rllmtop scenarios                    list the shipped scenarios
rllmtop sim serve|profiles           the simulated reasoning engine on its own
rllmtop sim calibrate REC.db -o P    fit a simulator profile to recordings of a real engine
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rllmtop.errors import run_command

if TYPE_CHECKING:
    from rllmtop.calibrate import StandIn

__all__ = ["main"]


def _add_load_overrides(p: argparse.ArgumentParser, *, simulator: bool = True, target: bool = True) -> None:
    """The workload flags `vllm bench serve` users know. ``simulator``: also --speed/--profile (they apply
    to a scenario whose engine is the simulator); ``target``: also --base-url (send elsewhere)."""
    g = p.add_argument_group("workload overrides (the names `vllm bench serve` uses)")
    g.add_argument(
        "--request-rate", type=float, metavar="R", help="mean arrival rate, requests/s (inf = all at once)"
    )
    g.add_argument("--burstiness", type=float, metavar="B", help="Gamma shape: 1 = Poisson, <1 burstier")
    g.add_argument("--max-concurrency", type=int, metavar="N", help="client-side cap on requests in flight")
    g.add_argument("--num-prompts", type=int, metavar="N", help="number of requests to send")
    g.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop sending after S seconds (without --scenario: end the session after S seconds)",
    )
    g.add_argument("--seed", type=int, help="seed for arrivals, prompt mix and the simulator")
    g.add_argument("--model", help="model name sent in requests (default: the server's first model)")
    if target:
        g.add_argument(
            "--base-url", metavar="URL", help="send to this server instead of the scenario's engine"
        )
    g.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY); never recorded")
    g.add_argument(
        "--goodput",
        nargs="+",
        metavar="KEY:SECONDS",
        help="per-request SLOs for goodput, seconds: ttft, ttfvt, e2el, itl (e.g. --goodput ttfvt:30 e2el:120)",
    )
    g.add_argument(
        "--clamp-max-tokens",
        action="store_true",
        help="cap a class's max_tokens at the engine's max_model_len (default: refuse to start)",
    )
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="ask the engine to generate max_tokens tokens, ignoring end of sequence (load.ignore_eos)",
    )
    g.add_argument(
        "--ramp-up-strategy",
        metavar="linear|exponential",
        help="move the arrival rate from --ramp-up-start-rate to --ramp-up-end-rate over the run",
    )
    g.add_argument(
        "--ramp-up-start-rate",
        "--ramp-up-start-rps",
        dest="ramp_up_start_rate",
        type=float,
        metavar="R",
        help="a ramp-up's first rate, requests/s",
    )
    g.add_argument(
        "--ramp-up-end-rate",
        "--ramp-up-end-rps",
        dest="ramp_up_end_rate",
        type=float,
        metavar="R",
        help="a ramp-up's last rate, requests/s",
    )
    if simulator:
        g.add_argument(
            "--speed",
            type=float,
            help="simulator only: a time-lapse, K times faster (the schedule too); figures on the simulated clock",
        )
        g.add_argument(
            "--profile", help="simulator only: hardware x model profile (see `rllmtop sim profiles`)"
        )


def _add_scale_out(p: argparse.ArgumentParser) -> None:
    """Who sends the load: this process, worker processes, or Ray actors (run controls: the requests
    and their times are the same whichever sends them)."""
    g = p.add_argument_group("scale-out (the same requests at the same times, more senders)")
    g.add_argument(
        "--workers",
        metavar="N|auto",
        help="send from N worker processes (with --ray: N per node); auto = from the planned rate and "
        "streams (default: the scenario's load.workers, else 1 = this process)",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="send from Ray actors over a cluster's nodes (needs rllmtop[ray]): auto (default), "
        "HOST:6379, ray://HOST:10001 or local",
    )
    g.add_argument(
        "--on-worker-death",
        choices=["continue", "stop"],
        help="when a worker dies: continue (default; its in-flight requests fail) or stop the run (failed)",
    )


def _add_results(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("results (the names `vllm bench serve` uses)")
    g.add_argument(
        "--percentile-metrics",
        metavar="M,M",
        help="latency columns of the summary: ttft,tpot,itl,e2el,ttfvt (default: TTFT, TTFVT, E2E)",
    )
    g.add_argument(
        "--metric-percentiles",
        metavar="Q,Q",
        help="their percentiles, whole numbers, e.g. 25,50,99 (default 50,90,99)",
    )
    g.add_argument(
        "--save-result",
        action="store_true",
        help="write a JSON summary with vllm bench serve's key names (times in ms) and rllmtop's own",
    )
    g.add_argument("--result-dir", metavar="DIR", help="where --save-result writes (default: here)")
    g.add_argument(
        "--result-filename",
        metavar="NAME",
        help="its file name (default: rllmtop-<rate>qps[-concurrency<N>]-<model>-<date>.json)",
    )


def _add_output(p: argparse.ArgumentParser, *, headless: bool = True) -> None:
    if headless:
        p.add_argument("--headless", action="store_true", help="no TUI: progress lines, then the ASU summary")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--record", metavar="FILE", help="record to FILE (default: recordings/<scenario>-<UTC time>.db)"
    )
    g.add_argument("--no-record", action="store_true", help="do not record this session")
    p.add_argument(
        "--scrape-interval",
        type=float,
        metavar="S",
        help="seconds between /metrics polls, 0.05 to 60 (default: the scenario's, else 0.25)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllmtop",
        description="top for reasoning-LLM serving: bursty load, live monitor, recordings.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no command: the `default` scenario on the embedded simulator, in the TUI.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a scenario (TUI unless --headless)")
    p.add_argument("scenario", help="a scenario file or the name of a shipped one (see `rllmtop scenarios`)")
    p.add_argument(
        "--matrix", action="store_true", help="run every cell of the scenario's [matrix], then compare"
    )
    _add_load_overrides(p)
    _add_scale_out(p)
    _add_results(p)
    _add_output(p)

    p = sub.add_parser(
        "attach",
        help="monitor running vLLM/SGLang servers (one, a fleet, a router's workers, or via Prometheus)",
        epilog="A fleet: list every engine (each is scraped at its own /metrics). The load of --scenario goes "
        "to --load-url (a router or gateway) or is balanced over the engines (--balance). A single URL that "
        "is a router (vllm-router, SGLang's router) is recognised: its workers are watched and the load "
        "goes to it. With --prometheus the engines come from the Prometheus server's series.",
    )
    p.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="engine base URLs, e.g. http://127.0.0.1:8000 (optional with --prometheus)",
    )
    fleet = p.add_argument_group("fleets")
    fleet.add_argument(
        "--metrics-url",
        metavar="URL",
        action="append",
        help="where an engine's /metrics lives if not at URL/metrics; repeat in URL order, '-' for the default",
    )
    fleet.add_argument(
        "--gpu-metrics-url",
        metavar="URL",
        action="append",
        help="a dcgm-exporter /metrics for an engine's GPUs; repeat in URL order, '-' for none",
    )
    fleet.add_argument(
        "--load-url",
        metavar="URL",
        help="send the scenario's load to this router/gateway (metrics still come from the engines)",
    )
    fleet.add_argument(
        "--balance",
        choices=["round_robin", "least_in_flight"],
        help="send the scenario's load straight to the engines, balanced client-side",
    )
    fleet.add_argument(
        "--prometheus",
        metavar="URL",
        help="read the engines' series from this Prometheus server (engines discovered from them)",
    )
    fleet.add_argument(
        "--prometheus-selector",
        metavar="SEL",
        default="",
        help="label selector narrowing the Prometheus series, e.g. '{job=\"vllm\"}'",
    )
    p.add_argument("--scenario", help="also send this scenario's load (default: watch only)")
    _add_load_overrides(p, simulator=False, target=False)
    _add_scale_out(p)
    _add_results(p)
    _add_output(p)

    p = sub.add_parser(
        "launch",
        help="launch vLLM or SGLang, monitor it, always tear it down",
        usage="rllmtop launch {vllm,sglang} MODEL [options] [-- extra engine arguments]",
        epilog="Everything after `--` is passed to the engine unchanged.",
    )
    p.add_argument("engine", choices=["vllm", "sglang"], help="which engine to launch: vllm or sglang")
    p.add_argument("model", help="model path or name to serve")
    p.add_argument(
        "--scenario", help="send this scenario's load (its engine toggles apply too; default: watch only)"
    )
    p.add_argument(
        "--command",
        dest="engine_command",
        metavar="CMD",
        help="engine entry command instead of `vllm serve` / `python -m sglang.launch_server`",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        metavar="S",
        help="give up if not ready after S seconds (default: the scenario's engine.startup_timeout, 900)",
    )
    p.add_argument(
        "--nice",
        type=int,
        metavar="N",
        help="run the engine at CPU priority N, 0-19 (engine.nice): on a box it shares with rllmtop, 10 keeps "
        "the client from being starved",
    )
    _add_load_overrides(p, simulator=False, target=False)
    _add_scale_out(p)
    _add_results(p)
    _add_output(p)

    p = sub.add_parser("replay", help="replay a recording in the TUI")
    p.add_argument("file", help="a recording (.db)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed, 0.25 to 64 (default 1)")
    p.add_argument("--headless", action="store_true", help="print the recording's ASU summary instead")

    p = sub.add_parser(
        "verify",
        help="check every row of a recording: checksums, values, structure, row counts",
        epilog="Exit 0 when every check passes, 1 when something is damaged or missing (it says what).",
    )
    p.add_argument("file", help="a recording (.db)")

    p = sub.add_parser("export", help="export a recording to CSV, JSON lines or Parquet")
    p.add_argument("file", help="a recording (.db)")
    p.add_argument(
        "--format",
        choices=["csv", "jsonl", "parquet"],
        default="csv",
        help="csv, jsonl or parquet (needs rllmtop[parquet]); default csv",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default: next to FILE, <name>-export/)")

    p = sub.add_parser(
        "sweep",
        help="run a scenario at rising load levels (each recorded); the highest that meets the SLOs",
        epilog="A search brackets by doubling from --start, then bisects to --tolerance, at most "
        "--max-levels levels. Each level stops early when the engine is over-saturated (the rule is in "
        "sweep.json and the report).",
    )
    p.add_argument("scenario", help="a scenario file or the name of a shipped one")
    lv = p.add_mutually_exclusive_group(required=True)
    lv.add_argument("--rates", metavar="R,R,...", help="request rates to run, requests/s (e.g. 1,2,4,8)")
    lv.add_argument(
        "--concurrencies", metavar="N,N,...", help="client concurrency caps to run (e.g. 8,16,32)"
    )
    lv.add_argument(
        "--search",
        choices=["max-rate", "max-concurrency"],
        help="search for the highest rate (or concurrency) meeting the SLOs",
    )
    p.add_argument(
        "--slo",
        nargs="+",
        metavar="KEY=VALUE",
        help="run-level SLOs a level must meet, as in [slo] (seconds): e.g. --slo ttfvt_p99=30 error_rate=0.01",
    )
    p.add_argument(
        "--start",
        type=float,
        metavar="X",
        help="a search's first level (default: the scenario's rate, else 1 req/s; concurrency 1)",
    )
    p.add_argument(
        "--max-levels", type=int, default=10, metavar="N", help="a search runs at most N levels (default 10)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        metavar="F",
        help="a search stops when the highest level meeting the SLOs and the lowest missing them are within "
        "this fraction of the former (default 0.1; concurrencies: within 1)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="the sweep directory (default: recordings/sweep-<scenario>-<UTC>/)"
    )
    p.add_argument(
        "--saturation-window",
        type=float,
        metavar="S",
        help="seconds the over-saturation rule looks back (default 20)",
    )
    p.add_argument(
        "--no-early-stop", action="store_true", help="run every level to its end, even over-saturated"
    )
    p.add_argument("--no-report", action="store_true", help="do not write the sweep report at the end")
    _add_load_overrides(p)

    p = sub.add_parser("report", help="figures and ASU tables from a recording (or a sweep directory)")
    p.add_argument("file", help="a recording (.db), or a sweep directory (holding sweep.json)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: reports/<name>/)")
    p.add_argument(
        "--goodput", nargs="+", metavar="KEY:SECONDS", help="judge goodput on these SLOs (seconds)"
    )

    p = sub.add_parser("compare", help="compare two or more recordings")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="two or more recordings (.db); the first is the baseline"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default: reports/compare-<names>/)")
    p.add_argument("--force", action="store_true", help="compare even when scenario or seed differ")
    p.add_argument(
        "--goodput", nargs="+", metavar="KEY:SECONDS", help="judge goodput on these SLOs (seconds)"
    )

    sub.add_parser("scenarios", help="list the shipped scenarios")

    p = sub.add_parser(
        "sim",
        help="the embedded simulated reasoning engine (`rllmtop sim --help`); "
        "`rllmtop sim calibrate REC.db -o P.toml` fits a profile to recordings",
        add_help=False,
    )
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    return parser


def sim_stand_in() -> StandIn:
    """The simulator's side of `sim calibrate` (see rllmtop.calibrate.StandIn)."""
    from rllmtop.calibrate import StandIn
    from rllmtop.sim.outputs import stand_in_prompt_tokens
    from rllmtop.sim.profiles import load_profile

    return StandIn(base_kind=lambda base: load_profile(base).kind, prompt_tokens=stand_in_prompt_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `rllmtop sim calibrate ...` reads recordings (client side); it hands the simulator's profile loader
    # in to check what it wrote, and its stand-in tokenizer to fit prompt lengths by
    if argv[:2] == ["sim", "calibrate"]:
        from rllmtop.calibrate import main as calibrate_main
        from rllmtop.sim.profiles import load_profile_file

        return calibrate_main(argv[2:], verify=load_profile_file, stand_in=sim_stand_in())
    # `rllmtop sim ...` is the simulator's own CLI (it can live as its own program)
    if argv and argv[0] == "sim":
        from rllmtop.sim.cli import main as sim_main

        return sim_main(argv[1:])
    engine_args: list[str] = []
    if argv and argv[0] == "launch" and "--" in argv:  # `launch ... -- <engine args>`
        cut = argv.index("--")
        argv, engine_args = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.engine_args = engine_args
    debug = args.debug or bool(os.environ.get("RLLMTOP_DEBUG"))

    def dispatch() -> int:
        from rllmtop import commands

        return commands.dispatch(args)

    return run_command("rllmtop", dispatch, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
