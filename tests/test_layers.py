"""The layer contract, checked on every import statement of the package (function-level ones too).

Arrows point down: a module may import modules of a lower layer, and modules of its own package (the
same first two name parts, e.g. ``rllmtop.workload.*``). Every module must be placed in a layer, so a new
one cannot slip in unchecked. The simulator shares nothing with the client side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rllmtop"

# (prefix, layer); the longest matching prefix decides
LAYERS: tuple[tuple[str, int], ...] = (
    ("rllmtop", 0),  # the package itself (__version__)
    ("rllmtop.errors", 0),
    ("rllmtop.events", 0),
    ("rllmtop.redact", 0),
    ("rllmtop._loop", 0),
    ("rllmtop.fmt", 0),
    ("rllmtop.clock", 1),
    ("rllmtop.scenario", 2),
    ("rllmtop.engines", 3),
    ("rllmtop.workload", 3),
    ("rllmtop.metrics", 4),
    # storage: the session is the recording's only writer, so the store sits below it
    ("rllmtop.record", 5),
    ("rllmtop.session", 6),
    ("rllmtop.view", 6),
    ("rllmtop.summary", 6),
    # faces and what is built from finished recordings
    ("rllmtop.headless", 7),
    ("rllmtop.tui", 7),
    ("rllmtop.record.report", 7),
    ("rllmtop.record.export", 7),
    ("rllmtop.record.sweep", 7),
    ("rllmtop.calibrate", 7),  # reads finished recordings, writes a simulator profile
    # runs of runs
    ("rllmtop.matrix", 8),
    ("rllmtop.sweep", 8),
    ("rllmtop.commands", 9),
    ("rllmtop.cli", 10),
    ("rllmtop.__main__", 11),
    ("rllmtop.sim", 12),  # its own world: see SIM_MAY_IMPORT
)
SIM_MAY_IMPORT = ("rllmtop", "rllmtop.errors")
# same-layer packages that may use each other, one way
PEERS = {("rllmtop.metrics", "rllmtop.engines")}


def _layer(mod: str) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for prefix, layer in LAYERS:
        if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[mod] = f
    return out


def _imports(path: Path, mod: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("rllmtop"):
                found.add(name)
                for alias in node.names:  # `from rllmtop import scenario` imports a module
                    sub = f"{name}.{alias.name}"
                    if sub in _MODULES:
                        found.add(sub)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rllmtop"))
    return found


_MODULES = _modules()


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_every_module_has_a_layer() -> None:
    assert [m for m in _MODULES if _layer(m) is None] == []


@pytest.mark.parametrize("mod", sorted(_MODULES))
def test_imports_point_down(mod: str) -> None:
    src = _layer(mod)
    assert src is not None
    wrong = []
    for target in sorted(_imports(_MODULES[mod], mod)):
        dst = _layer(target)
        if dst is None:
            wrong.append(f"{target} (no layer)")
            continue
        if src[0] == "rllmtop.sim" or mod.startswith("rllmtop.sim."):
            if not (target.startswith("rllmtop.sim") or target in SIM_MAY_IMPORT):
                wrong.append(f"{target} (the simulator shares nothing with the client side)")
            continue
        if dst[0] == "rllmtop.sim":
            if mod.split(".")[1] not in ("cli", "commands", "__main__"):
                wrong.append(f"{target} (only the CLI starts the simulator in-process)")
            continue
        same_pkg = _package(mod) == _package(target) and _package(mod) != "rllmtop"
        if same_pkg and not (dst[1] > src[1] and dst[0] != src[0]):
            continue  # within a package (but storage may not import the reports built on it)
        if (_package(mod), _package(target)) in PEERS:
            continue
        if dst[1] >= src[1] and target != "rllmtop":
            wrong.append(f"{target} (layer {dst[1]} from layer {src[1]})")
    assert wrong == [], f"{mod} imports upward: {wrong}"


def test_the_contract_fails_on_a_wrong_arrow(tmp_path: Path) -> None:
    """The checker itself: an events module importing the session must be caught."""
    f = tmp_path / "events.py"
    f.write_text("from rllmtop.session import Session\n")
    assert "rllmtop.session" in _imports(f, "rllmtop.events")
    assert _layer("rllmtop.session")[1] > _layer("rllmtop.events")[1]  # type: ignore[index]
