"""One core call per CLI subcommand. Arguments in, a session or a file operation out; no logic of its own
beyond turning flags into a SessionPlan."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from rllmtop.errors import UserError
from rllmtop.scenario import OVERRIDE_FLAGS, EngineSpec, Scenario
from rllmtop.session import Session, SessionOutcome, SessionPlan, default_record_path

__all__ = ["build_session", "dispatch"]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in OVERRIDE_FLAGS if getattr(args, k, None) is not None}


def _goodput(args: argparse.Namespace) -> dict[str, float] | None:
    spec = getattr(args, "goodput", None)
    if not spec:
        return None
    from rllmtop.metrics.analysis import parse_goodput

    return parse_goodput(spec)


def _run_controls(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    """Flags that steer the run but not the workload (so not in provenance's workload)."""
    if getattr(args, "clamp_max_tokens", False):
        scenario = dataclasses.replace(
            scenario, load=dataclasses.replace(scenario.load, clamp_max_tokens=True)
        )
    if getattr(args, "ignore_eos", False):
        scenario = dataclasses.replace(scenario, load=dataclasses.replace(scenario.load, ignore_eos=True))
    goodput = _goodput(args)
    if goodput:  # judged live and kept in the recording's session facts
        scenario = dataclasses.replace(scenario, goodput=goodput)
    scale = _scale_out(args)
    if scale:
        scenario = dataclasses.replace(scenario, load=dataclasses.replace(scenario.load, **scale))
    return scenario


def _scale_out(args: argparse.Namespace) -> dict[str, Any]:
    """--workers / --ray / --on-worker-death as load fields (checked like the scenario's)."""
    from rllmtop.scenario.limits import MAX_WORKERS

    out: dict[str, Any] = {}
    w = getattr(args, "workers", None)
    if w is not None:
        if w.strip().lower() == "auto":
            out["workers"] = 0
        else:
            try:
                n = int(w)
            except ValueError:
                n = -1
            if not 1 <= n <= MAX_WORKERS:
                raise UserError(f"--workers {w}: not a worker count", f"give 1 to {MAX_WORKERS}, or auto")
            out["workers"] = n
    ray = getattr(args, "ray", None)
    if ray is not None:
        if not ray or len(ray) > 300 or any(c.isspace() for c in ray):
            raise UserError(
                f"--ray {ray!r}: not a Ray address", "give auto, HOST:6379, ray://HOST:10001 or local"
            )
        out["ray"] = ray
    death = getattr(args, "on_worker_death", None)
    if death is not None:
        out["on_worker_death"] = death
    return out


def _view(args: argparse.Namespace) -> Any:
    """The summary's latency columns and percentiles (``--percentile-metrics``, ``--metric-percentiles``)."""
    from rllmtop.summary import PCTS, SummaryView, parse_metric_percentiles, parse_percentile_metrics

    metrics = getattr(args, "percentile_metrics", None)
    pcts = getattr(args, "metric_percentiles", None)
    return SummaryView(
        parse_percentile_metrics(metrics) if metrics else (),
        parse_metric_percentiles(pcts) if pcts else PCTS,
    )


def _save_result(args: argparse.Namespace, session: Session, view: Any) -> None:
    """``--save-result``: the run's JSON summary (``vllm bench serve`` key names; see rllmtop.summary)."""
    if not getattr(args, "save_result", False) or session.info is None:
        return
    from rllmtop.summary import result_json, write_result

    outcome = session.outcome
    sc = session.plan.scenario
    result = result_json(
        session.info,
        list(session.ended_requests()),
        goodput=dict(sc.goodput) if sc is not None else None,
        view=view,
        status=outcome.state.value if outcome else "",
        status_detail=outcome.detail if outcome else "",
        warnings=outcome.warnings if outcome else (),
        scenario=sc,
        recording=str(outcome.record_path) if outcome and outcome.record_path else None,
    )
    print(f"result: {write_result(result, args.result_dir, args.result_filename)}")


def _api_key(args: argparse.Namespace) -> str | None:
    return getattr(args, "api_key", None) or os.environ.get("OPENAI_API_KEY") or None


def _record_path(args: argparse.Namespace, name: str) -> Path | None:
    if getattr(args, "no_record", False):
        return None
    if getattr(args, "record", None):
        path = Path(args.record)
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, a device or a socket)"
            raise UserError(f"--record {path}: {kind}", "give a path for a new .db file")
        return path
    return default_record_path(name)


def build_session(
    scenario: Scenario | None,
    *,
    mode: str,
    engine: EngineSpec | None = None,
    record: Path | None = None,
    api_key: str | None = None,
    scrape_interval: float | None = None,
    extra_engine_args: tuple[str, ...] = (),
    duration: float | None = None,
) -> Session:
    """A Session for a scenario (its engine unless ``engine`` is given), or for an engine alone (no load).

    Tests use this too: ``build_session(load_scenario("stragglers", {"speed": 20}), mode="live",
    record=tmp_path / "s.db")``.
    """
    if engine is None:
        if scenario is None:
            raise UserError("nothing to run: no scenario and no engine", "give a scenario or an engine URL")
        engine = scenario.engine
    if scenario is not None and mode != "replay":
        from rllmtop.workload.schedule import preflight

        preflight(scenario)  # a bad prompt file or trace is one message before any engine starts
    if scrape_interval is not None:
        interval = scrape_interval
        if not (math.isfinite(interval) and 0.05 <= interval <= 60):
            raise UserError(
                f"--scrape-interval {interval:g} is out of range", "use 0.05 to 60 seconds (default 0.25)"
            )
    else:
        interval = scenario.scrape_interval if scenario else 0.25
    plan = SessionPlan(
        mode=mode,
        scenario=scenario,
        engine=engine,
        api_key=api_key,
        record_path=record,
        scrape_interval=interval,
        extra_engine_args=extra_engine_args,
        duration=duration if scenario is None else None,
    )
    return Session(plan)


def _present(session: Session, headless: bool, view: Any = None) -> int:
    if headless:
        from rllmtop.headless import run_headless

        return run_headless(session, view=view)
    from rllmtop.tui.app import build_app

    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise UserError(
            "the TUI needs an interactive terminal (stdin/stdout are not a TTY)",
            "add --headless for scripts, CI and clusters",
        )
    from rllmtop._loop import new_event_loop

    app = build_app(session)
    loop = new_event_loop()
    try:
        outcome = app.run(loop=loop)
    finally:
        loop.close()
    if isinstance(outcome, SessionOutcome):
        from rllmtop.headless import format_outcome

        print(format_outcome(session, outcome, view, elapsed=app.ended_at))
        return outcome.exit_code
    return 0


def _present_and_save(args: argparse.Namespace, session: Session, headless: bool) -> int:
    view = _view(args)
    code = _present(session, headless, view)
    _save_result(args, session, view)
    return code


def _cmd_run(args: argparse.Namespace, scenario_ref: str) -> int:
    from rllmtop.scenario import load_scenario

    _view(args)  # a bad --percentile-metrics fails before anything starts
    scenario = _run_controls(load_scenario(scenario_ref, _overrides(args)), args)
    if getattr(args, "matrix", False):
        from rllmtop.matrix import run_matrix

        return run_matrix(
            scenario, headless=True, api_key=_api_key(args), record=getattr(args, "record", None)
        )
    engine = scenario.engine
    session = build_session(
        scenario,
        mode="headless" if args.headless else "live",
        engine=engine,
        record=_record_path(args, scenario.name),
        api_key=_api_key(args),
        scrape_interval=getattr(args, "scrape_interval", None),
    )
    return _present_and_save(args, session, args.headless)


def _cmd_attach(args: argparse.Namespace) -> int:
    _view(args)
    scenario = None
    if args.scenario:
        from rllmtop.scenario import load_scenario

        scenario = _run_controls(load_scenario(args.scenario, _overrides(args)), args)
    engine = _attach_engine(args, has_load=scenario is not None)
    session = build_session(
        scenario,
        mode="attach",
        engine=engine,
        record=_record_path(args, scenario.name if scenario else "attach"),
        api_key=_api_key(args),
        scrape_interval=args.scrape_interval,
        duration=_watch_duration(args),
    )
    return _present_and_save(args, session, args.headless)


def _attach_engine(args: argparse.Namespace, *, has_load: bool) -> EngineSpec:
    """The engine spec of ``attach URL [URL ...]`` and its fleet flags (checked here, before a session
    or a recording exists)."""
    from rllmtop.engines.adapters import normalize_base_url
    from rllmtop.scenario import EngineEndpoint, PrometheusSpec
    from rllmtop.scenario.engine import check_prometheus_selector
    from rllmtop.session.fleet import check_fleet

    urls = [u.rstrip("/") for u in args.urls]
    for u in (*urls, args.load_url or "", args.prometheus or ""):
        if u:
            normalize_base_url(u)  # a UserError naming a URL that is not http(s)
    dupes = sorted({u for u in urls if urls.count(u) > 1})
    if dupes:
        raise UserError(f"{dupes[0]} is listed twice", "give each engine once")
    if not urls and not args.prometheus:
        raise UserError(
            "attach needs an engine URL (or --prometheus URL)",
            "rllmtop attach http://HOST:PORT [http://HOST2:PORT ...]",
        )

    def per_url(flag: str, given: list[str] | None) -> list[str]:
        given = list(given or [])
        if len(given) > len(urls):
            raise UserError(
                f"{len(given)} {flag} for {len(urls)} engine URL(s)",
                f"give {flag} once per URL, in URL order ('-' keeps the default)",
            )
        out = ["" if g == "-" else g.rstrip("/") for g in given] + [""] * (len(urls) - len(given))
        for g in out:
            if g:
                normalize_base_url(g)
        return out

    metrics = per_url("--metrics-url", args.metrics_url)
    gpus = per_url("--gpu-metrics-url", args.gpu_metrics_url)
    balance = args.balance or "none"
    load_url = args.load_url.rstrip("/") if args.load_url else None
    if args.prometheus:
        problem = check_prometheus_selector(args.prometheus_selector) if args.prometheus_selector else None
        if problem is not None:
            raise UserError(
                f"--prometheus-selector {args.prometheus_selector!r} is not a label selector: {problem}",
                "e.g. --prometheus-selector '{job=\"vllm\"}'",
            )
        if any(metrics) or any(gpus):
            raise UserError(
                "--metrics-url / --gpu-metrics-url with --prometheus: the series come from Prometheus",
                "drop them (GPU series from a dcgm-exporter Prometheus scrapes are read from it too)",
            )
        if len(urls) > 1 and balance == "none":
            raise UserError(
                f"{len(urls)} engine URLs with --prometheus: with Prometheus, URLs say where the load goes",
                "add --balance round_robin to balance over them, or give the router with --load-url",
            )
        interval = args.scrape_interval if args.scrape_interval is not None else 1.0
        spec = EngineSpec(
            kind="url",
            url=load_url,
            endpoints=tuple(EngineEndpoint(u) for u in urls),
            balance=balance,
            prometheus=PrometheusSpec(
                args.prometheus.rstrip("/"), selector=args.prometheus_selector, interval=interval
            ),
        )
    elif len(urls) == 1 and load_url is None and not gpus[0] and balance == "none":
        spec = EngineSpec(kind="url", url=urls[0], metrics_url=metrics[0] or None)
    else:
        spec = EngineSpec(
            kind="url",
            url=load_url,
            endpoints=tuple(
                EngineEndpoint(u, metrics_url=m or None, gpu_metrics_url=g or None)
                for u, m, g in zip(urls, metrics, gpus, strict=True)
            ),
            balance=balance,
        )
    check_fleet(spec, has_load=has_load)
    return spec


def _watch_duration(args: argparse.Namespace) -> float | None:
    d = getattr(args, "duration", None)
    if d is not None and not (math.isfinite(d) and d > 0):
        raise UserError(f"--duration {d:g} must be a positive number of seconds", "e.g. --duration 60")
    return d


def _cmd_launch(args: argparse.Namespace) -> int:
    _view(args)
    scenario = None
    base = EngineSpec(kind=args.engine)
    if args.scenario:
        from rllmtop.scenario import load_scenario

        scenario = _run_controls(load_scenario(args.scenario, _overrides(args)), args)
        base = scenario.engine
    changes: dict[str, Any] = {"kind": args.engine, "model": args.model}
    if args.engine_command:
        import shlex

        changes["command"] = tuple(shlex.split(args.engine_command))
    if args.startup_timeout:
        changes["startup_timeout"] = args.startup_timeout
    if args.nice is not None:
        if not 0 <= args.nice <= 19:
            raise UserError(
                f"--nice {args.nice} is out of range", "use a CPU priority from 0 to 19 (10 yields)"
            )
        changes["nice"] = args.nice
    engine = dataclasses.replace(base, **changes)
    if scenario is not None:
        scenario = dataclasses.replace(scenario, engine=engine)
    extra = tuple(args.engine_args)
    session = build_session(
        scenario,
        mode="live" if not args.headless else "headless",
        engine=engine,
        record=_record_path(args, scenario.name if scenario else f"launch-{args.engine}"),
        api_key=_api_key(args),
        scrape_interval=args.scrape_interval,
        extra_engine_args=extra,
        duration=_watch_duration(args),
    )
    return _present_and_save(args, session, args.headless)


def _cmd_replay(args: argparse.Namespace) -> int:
    if not 0.25 <= args.speed <= 64:
        raise UserError(f"--speed {args.speed:g} is out of range", "use a speed from 0.25 to 64")
    path = Path(args.file)
    if args.headless:
        from rllmtop.record.reader import open_recording
        from rllmtop.session.results import recording_results
        from rllmtop.summary import format_summary
        from rllmtop.view import worker_warnings

        with open_recording(path) as rec:
            info, status = rec.info, rec.status
            workers = worker_warnings(rec.worker_events())  # as the live view said them
        res = recording_results(path)
        clock = f"; times in {info.clock} seconds (speed {info.speed:g})" if info.clock != "wall" else ""
        print(f"{path}: {info.scenario_name or 'session'} on {info.engine_kind}, status {status}{clock}")
        warnings = (*workers, *res.warnings)
        print(format_summary(res.summary, warnings) if res.requests else "no requests recorded")
        return 0
    session = Session(SessionPlan(mode="replay", replay_path=path, replay_speed=args.speed))
    return _present(session, headless=False)


def _cmd_verify(args: argparse.Namespace) -> int:
    from rllmtop.record.reader import open_recording

    path = Path(args.file)
    with open_recording(path) as rec:
        report = rec.verify()
        status = rec.status
    print(f"{path}: schema {rec.schema_version}, status {status}: {report.summary}")
    for line in report.problems:
        print(f"  {line}")
    return 0 if report.ok else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from rllmtop.record.export import export_recording

    path = Path(args.file)
    out = Path(args.out) if args.out else path.with_name(path.stem + "-export")
    for f in export_recording(path, args.format, out):
        print(f)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rllmtop.record.report import build_report
    from rllmtop.record.sweep import build_sweep_report, is_sweep_dir

    path = Path(args.file)
    if is_sweep_dir(path):
        print(f"sweep report: {build_sweep_report(path, args.out, goodput=_goodput(args))}")
        return 0
    out = Path(args.out) if args.out else Path("reports") / path.stem
    index = build_report(path, out, goodput=_goodput(args))
    print(f"report: {index}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rllmtop.record.report import compare_recordings

    paths = [Path(f) for f in args.files]
    if len(paths) < 2:
        raise UserError("compare needs at least two recordings", "rllmtop compare A.db B.db")
    out = (
        Path(args.out)
        if args.out
        else Path("reports") / ("compare-" + "-vs-".join(p.stem for p in paths))[:120]
    )
    c = compare_recordings(paths, out, force=args.force, goodput=_goodput(args))
    print(c.text)
    print(f"comparison: {c.index}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from rllmtop.metrics.analysis import SaturationRule, parse_slo
    from rllmtop.scenario import load_scenario
    from rllmtop.sweep import MAX_LEVELS, SweepSpec, parse_levels, run_sweep

    axis = "concurrency" if args.concurrencies or args.search == "max-concurrency" else "rate"
    grid: tuple[float, ...] = ()
    if args.rates:
        grid = parse_levels(args.rates, "--rates")
    elif args.concurrencies:
        grid = parse_levels(args.concurrencies, "--concurrencies", integer=True)
    ov = _overrides(args)
    owned = "request_rate" if axis == "rate" else "max_concurrency"
    if owned in ov or (axis == "rate" and "ramp_up_strategy" in ov):
        flag = OVERRIDE_FLAGS["ramp_up_strategy" if owned not in ov else owned]
        raise UserError(
            f"{flag} conflicts with the sweep: each level sets its own {axis}",
            "drop it; the levels come from --rates, --concurrencies or --search",
        )
    if not 1 <= args.max_levels <= MAX_LEVELS:
        raise UserError(f"--max-levels {args.max_levels} is out of range", f"use 1 to {MAX_LEVELS}")
    if not (math.isfinite(args.tolerance) and 0 < args.tolerance <= 1):
        raise UserError(f"--tolerance {args.tolerance:g} is out of range", "a fraction above 0, at most 1")
    if args.start is not None and not (math.isfinite(args.start) and args.start > 0):
        raise UserError(f"--start {args.start:g} must be a positive number", "e.g. --start 1")
    rule: SaturationRule | None = None
    if not args.no_early_stop:
        w = args.saturation_window
        if w is not None and not (math.isfinite(w) and w > 0):
            raise UserError(
                f"--saturation-window {w:g} must be positive seconds", "e.g. --saturation-window 20"
            )
        rule = SaturationRule(window=w) if w is not None else SaturationRule()
    spec = SweepSpec(
        axis=axis,
        grid=grid,
        start=args.start,
        max_levels=args.max_levels,
        tolerance=args.tolerance,
        slo=parse_slo(args.slo) if args.slo else {},
        goodput=_goodput(args),
        saturation=rule,
        report=not args.no_report,
    )

    def make(overrides: Any) -> Scenario:
        return _run_controls(load_scenario(args.scenario, overrides), args)

    return run_sweep(make, spec, overrides=ov, out_dir=args.out, api_key=_api_key(args))


def _cmd_scenarios() -> int:
    from rllmtop.scenario import list_scenarios

    rows = list_scenarios()
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name.ljust(width)}  {desc}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.version:
        from rllmtop import __version__

        print(f"rllmtop {__version__}")
        return 0
    cmd = args.command
    if cmd is None:
        ns = argparse.Namespace(
            headless=False, record=None, no_record=False, scrape_interval=None, matrix=False
        )
        return _cmd_run(ns, "default")
    if cmd == "run":
        return _cmd_run(args, args.scenario)
    if cmd == "attach":
        return _cmd_attach(args)
    if cmd == "launch":
        return _cmd_launch(args)
    if cmd == "replay":
        return _cmd_replay(args)
    if cmd == "verify":
        return _cmd_verify(args)
    if cmd == "export":
        return _cmd_export(args)
    if cmd == "report":
        return _cmd_report(args)
    if cmd == "compare":
        return _cmd_compare(args)
    if cmd == "sweep":
        return _cmd_sweep(args)
    if cmd == "scenarios":
        return _cmd_scenarios()
    raise UserError(f"unknown command {cmd!r}", "see rllmtop --help")
