"""Finding and loading scenarios: shipped names or paths, the file read within bounds, command-line
overrides, every ``[matrix]`` cell validated, the provenance resolved once."""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from rllmtop.errors import UserError
from rllmtop.scenario.build import build_scenario
from rllmtop.scenario.document import Raw, parse_document
from rllmtop.scenario.limits import MAX_FILE_BYTES
from rllmtop.scenario.matrix import cell_label, cells
from rllmtop.scenario.messages import Ctx, display
from rllmtop.scenario.overrides import apply_cell, apply_override, fork
from rllmtop.scenario.provenance import provenance
from rllmtop.scenario.schema import Scenario

__all__ = ["list_scenarios", "load_scenario", "matrix_cells", "scenario_dirs"]


def scenario_dirs() -> list[Path]:
    """Directories searched for shipped scenarios, in order: inside the installed package
    (``rllmtop/scenarios``: in a source checkout a symlink to ``../scenarios``, in a wheel the files
    themselves), then the checkout's ``scenarios/`` next to the package."""
    here = Path(__file__).resolve().parent.parent  # the rllmtop package
    out: list[Path] = []
    try:
        from importlib.resources import files

        res = files("rllmtop") / "scenarios"
        if res.is_dir():
            out.append(Path(str(res)).resolve())
    except (ModuleNotFoundError, TypeError, OSError):
        pass
    for d in (here / "scenarios", here.parent / "scenarios"):
        if d.is_dir() and d.resolve() not in out:
            out.append(d.resolve())
    return out


def _shipped() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in scenario_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def list_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every shipped scenario, sorted by name."""
    out: list[tuple[str, str]] = []
    for name, p in sorted(_shipped().items()):
        try:
            desc = str(tomllib.loads(p.read_text(encoding="utf-8")).get("description", ""))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
            desc = f"(unreadable: {e})"
        out.append((name, " ".join(desc.split())))
    return out


def load_scenario(path_or_name: str, overrides: Mapping[str, object] | None = None) -> Scenario:
    """Load a scenario from a ``.toml`` path or the name of a shipped one, apply CLI overrides, validate
    it and every cell of its ``[matrix]``.

    ``overrides`` keys are those of :data:`OVERRIDE_FLAGS` (``None`` values are ignored). Raises
    :class:`UserError` naming the file, the field, the bad value and what is allowed.
    ``Scenario.text`` is the file's text as read; what changed it is ``Scenario.provenance``.
    """
    path = _resolve(path_or_name)
    text = _read(path)
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    ctx = Ctx(str(path))
    raw = parse_document(ctx, text)
    base = fork(raw)
    for key, value in ov.items():
        apply_override(ctx, raw, key, value)
    sc = build_scenario(ctx, raw, path)
    for cell in cells(sc.matrix):  # every cell must be valid too (at most MAX_MATRIX_CELLS)
        _cell(base, path, ov, cell, path_or_name, text)
    return dataclasses.replace(
        sc, text=text, overrides=ov, cell={}, provenance=provenance(raw, path_or_name, ov, {}, sc)
    )


def matrix_cells(scenario: Scenario) -> list[tuple[dict[str, object], Scenario]]:
    """Every cell of the scenario's ``[matrix]`` (cartesian product, in file order) as (cell, Scenario).

    The cell's values are applied after the CLI overrides; each cell's scenario is named
    ``name[key=value,...]``. A scenario without a matrix gives one cell: ({}, scenario).
    """
    if not scenario.matrix:
        return [({}, scenario)]
    path = Path(scenario.path) if scenario.path else Path("<scenario>")
    source = scenario.provenance.source if scenario.provenance else str(path)
    raw = parse_document(Ctx(str(path)), scenario.text)
    ov = dict(scenario.overrides)
    return [(cell, _cell(raw, path, ov, cell, source, scenario.text)) for cell in cells(scenario.matrix)]


def _cell(
    raw: Raw, path: Path, overrides: Mapping[str, object], cell: dict[str, object], source: str, text: str
) -> Scenario:
    ctx = Ctx(str(path))
    doc = fork(raw)
    for key, value in overrides.items():
        apply_override(ctx, doc, key, value)
    apply_cell(ctx, doc, cell)
    sc = build_scenario(ctx, doc, path)
    return dataclasses.replace(
        sc,
        name=f"{sc.name}[{cell_label(cell)}]",
        text=text,
        overrides=dict(overrides),
        cell=dict(cell),
        provenance=provenance(doc, source, overrides, cell, sc),
    )


def _resolve(path_or_name: str) -> Path:
    shown = display(path_or_name, 160)
    p = Path(path_or_name)
    try:
        p = p.expanduser()
        st = p.stat()
    except (OSError, ValueError, RuntimeError):
        st = None
    if st is not None:
        if stat.S_ISREG(st.st_mode):
            return p
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UserError(
            f"scenario file {shown} is {kind}", "pass a .toml file, or the name of a shipped scenario"
        )
    looks_like_path = p.suffix == ".toml" or "/" in path_or_name or "\\" in path_or_name
    shipped = _shipped()
    if not looks_like_path and path_or_name in shipped:
        return shipped[path_or_name]
    names = ", ".join(sorted(shipped)) or "(none found)"
    if looks_like_path:
        raise UserError(f"scenario file {shown} does not exist", f"shipped scenarios: {names}")
    close = difflib.get_close_matches(path_or_name, list(shipped), n=1) if len(path_or_name) <= 64 else []
    did = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"no shipped scenario named '{shown}' and no such file", f"{did}shipped scenarios: {names}"
    )


def _read(path: Path) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped), at most :data:`MAX_FILE_BYTES`."""
    shown = display(str(path), 160)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by a FIFO or a device since _resolve
                raise UserError(f"scenario file {shown} is not a regular file", "pass a .toml file")
            with os.fdopen(fd, "rb") as f:
                fd = -1
                data = f.read(MAX_FILE_BYTES + 1)
        finally:
            if fd >= 0:
                os.close(fd)
    except OSError as e:
        raise UserError(
            f"cannot read scenario file {shown}: {display(e.strerror or str(e), 80)}",
            "check the path and permissions",
        ) from e
    if len(data) > MAX_FILE_BYTES:
        raise UserError(
            f"scenario file {shown} is larger than {MAX_FILE_BYTES:,} bytes",
            f"allowed: at most {MAX_FILE_BYTES:,} bytes (MAX_FILE_BYTES); scenarios are short TOML files",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"cannot read scenario file {shown}: not UTF-8 text (byte {e.start})",
            "save the file as UTF-8",
        ) from e
    return text.removeprefix("\ufeff")
