"""matrix.py: experiment matrices (cells, validation, progress, recordings, the comparison)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rllmtop import matrix as M
from rllmtop.errors import UserError
from rllmtop.events import SessionState
from rllmtop.scenario import load_scenario

SCENARIO = """name = "mtest"
seed = 3
[engine]
kind = "sim"
profile = "rllm-7b"
speed = 50
[arrival]
process = "gamma"
rate = 5
[load]
num_prompts = 20
[[classes]]
name = "easy"
prompts = {{ builtin = "math-easy" }}
{matrix}
"""


def write(tmp_path: Path, matrix: str, name: str = "m.toml") -> Path:
    p = tmp_path / name
    p.write_text(SCENARIO.format(matrix=matrix), encoding="utf-8")
    return p


def test_cells_are_the_cartesian_product_in_file_order(tmp_path: Path) -> None:
    sc = load_scenario(
        str(
            write(
                tmp_path,
                '[matrix]\nprofile = ["rllm-7b", "llm-7b"]\n"engine.kv_cache_dtype" = ["auto", "fp8"]',
            )
        )
    )
    cells = M.plan_matrix(sc, record=tmp_path / "rec", stamp="20250101T000000Z")
    assert [c.label for c in cells] == [
        "profile=rllm-7b,kv_cache_dtype=auto",
        "profile=rllm-7b,kv_cache_dtype=fp8",
        "profile=llm-7b,kv_cache_dtype=auto",
        "profile=llm-7b,kv_cache_dtype=fp8",
    ]
    assert [c.index for c in cells] == [1, 2, 3, 4]
    assert [(c.scenario.engine.profile, c.scenario.engine.kv_cache_dtype) for c in cells] == [
        ("rllm-7b", "auto"),
        ("rllm-7b", "fp8"),
        ("llm-7b", "auto"),
        ("llm-7b", "fp8"),
    ]
    # same workload and seed in every cell
    assert {(c.scenario.seed, c.scenario.arrival, c.scenario.load, c.scenario.classes) for c in cells} == {
        (sc.seed, sc.arrival, sc.load, sc.classes)
    }
    assert (
        cells[1].record_path
        == tmp_path / "rec" / "mtest-profile-rllm-7b-kv_cache_dtype-fp8-20250101T000000Z.db"
    )
    assert len({c.record_path for c in cells}) == 4


def test_default_record_directory_is_recordings(tmp_path: Path) -> None:
    sc = load_scenario(str(write(tmp_path, '[matrix]\n"engine.prefix_caching" = [true, false]')))
    cells = M.plan_matrix(sc, stamp="S")
    assert [c.label for c in cells] == ["prefix_caching=on", "prefix_caching=off"]
    assert all(c.record_path.parent == Path("recordings") for c in cells)


def test_scenario_without_matrix_is_refused(tmp_path: Path) -> None:
    sc = load_scenario(str(write(tmp_path, "")))
    with pytest.raises(UserError) as ei:
        M.plan_matrix(sc)
    assert "[matrix]" in ei.value.what and "m.toml" in ei.value.what
    assert "without --matrix" in ei.value.hint


def test_record_must_name_a_directory(tmp_path: Path) -> None:
    sc = load_scenario(str(write(tmp_path, '[matrix]\nprofile = ["rllm-7b", "llm-7b"]')))
    with pytest.raises(UserError, match="names a directory"):
        M.plan_matrix(sc, record=tmp_path / "x.db")
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(UserError, match="names a directory"):
        M.plan_matrix(sc, record=f)


@pytest.mark.parametrize(
    ("matrix", "needle"),
    [
        ('[matrix]\nkv_cache_dtype = ["auto", "fp8"]', "kv_cache_dtype"),  # not dotted, not an override
        ('[matrix]\n"engine.kv_cache_dtype" = ["auto", "fp4"]', "fp4"),  # a value the engine does not know
        ('[matrix]\n"engine.max_num_seqs" = [64, 0]', "max_num_seqs"),
        ('[matrix]\n"engine.nonsense" = [1, 2]', "nonsense"),
        ("[matrix]\nprofile = []", "profile"),
    ],
)
def test_bad_matrix_keys_and_values_are_clear_errors(tmp_path: Path, matrix: str, needle: str) -> None:
    """Every cell is validated before the first one runs (by the loader or by building its command)."""
    with pytest.raises(UserError) as ei:
        M.plan_matrix(load_scenario(str(write(tmp_path, matrix))), record=tmp_path)
    assert needle in ei.value.what
    assert ei.value.hint


def test_repeated_cell_is_refused(tmp_path: Path) -> None:
    sc = load_scenario(str(write(tmp_path, '[matrix]\nprofile = ["llm-7b", "llm-7b"]')))
    with pytest.raises(UserError, match="twice"):
        M.plan_matrix(sc, record=tmp_path)


def _fake_cells(results: dict[str, tuple[SessionState, int, int]]):  # type: ignore[no-untyped-def]
    ran: list[str] = []

    def run_cell(
        cell: M.MatrixCell, api_key: str | None, out: io.StringIO, progress: io.StringIO
    ) -> M.CellResult:
        ran.append(cell.label)
        state, code, n = results[cell.label]
        return M.CellResult(cell, state, code, n, 0.5)

    return ran, run_cell


def test_progress_across_cells_and_worst_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = load_scenario(str(write(tmp_path, '[matrix]\nprofile = ["rllm-7b", "llm-7b", "rllm-1.5b"]')))
    ran, fake = _fake_cells(
        {
            "profile=rllm-7b": (SessionState.DONE, 0, 0),
            "profile=llm-7b": (SessionState.DONE, 1, 0),  # SLO missed
            "profile=rllm-1.5b": (SessionState.FAILED, 2, 0),
        }
    )
    monkeypatch.setattr(M, "_run_cell", fake)
    out, progress = io.StringIO(), io.StringIO()
    code = M.run_matrix(sc, record=tmp_path / "rec", out=out, progress=progress)
    assert code == 2
    assert ran == ["profile=rllm-7b", "profile=llm-7b", "profile=rllm-1.5b"]
    p = progress.getvalue()
    assert "cell 1/3: profile=rllm-7b" in p and "cell 3/3: profile=rllm-1.5b" in p
    o = out.getvalue()
    assert "3/3 cells" in o and "comparison: skipped" in o


def test_interrupt_stops_the_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = load_scenario(str(write(tmp_path, '[matrix]\nprofile = ["rllm-7b", "llm-7b", "rllm-1.5b"]')))
    ran, fake = _fake_cells(
        {
            "profile=rllm-7b": (SessionState.DONE, 0, 0),
            "profile=llm-7b": (SessionState.INTERRUPTED, 130, 0),
            "profile=rllm-1.5b": (SessionState.DONE, 0, 0),
        }
    )
    monkeypatch.setattr(M, "_run_cell", fake)
    progress = io.StringIO()
    code = M.run_matrix(sc, record=tmp_path, out=io.StringIO(), progress=progress)
    assert code == 130
    assert ran == ["profile=rllm-7b", "profile=llm-7b"]
    assert "1 cell(s) not run" in progress.getvalue()


@pytest.mark.slow
def test_matrix_on_the_simulator_records_every_cell_and_compares(tmp_path: Path) -> None:
    """Two cells on the real simulator (small, fast): recordings, the comparison, the terminal tables."""
    import json

    from rllmtop.record.reader import open_recording

    text = SCENARIO.format(matrix='[matrix]\nprofile = ["rllm-7b", "llm-7b"]').replace(
        'name = "easy"', 'name = "easy"\nmax_tokens = 2000'
    )
    p = tmp_path / "m.toml"
    p.write_text(text, encoding="utf-8")
    out, progress = io.StringIO(), io.StringIO()
    code = M.run_matrix(load_scenario(str(p)), record=tmp_path / "rec", out=out, progress=progress)
    assert code == 0, out.getvalue() + progress.getvalue()
    dbs = sorted((tmp_path / "rec").glob("*.db"))
    assert [d.name.split("-2")[0] for d in dbs] == ["mtest-profile-llm-7b", "mtest-profile-rllm-7b"]
    for d in dbs:
        with open_recording(d) as rec:
            assert len(rec.requests()) == 20
            assert rec.info.seed == 3
            assert dict(rec.info.extra)["matrix_cell"] in ("profile=rllm-7b", "profile=llm-7b")
    reports = list((tmp_path / "rec").glob("mtest-matrix-*/index.html"))
    assert len(reports) == 1
    data = json.loads(reports[0].with_name("compare.json").read_text())
    assert data["comparable"] is True
    assert [r["label"] for r in data["runs"]] == ["profile=rllm-7b", "profile=llm-7b"]
    o = out.getvalue()
    assert "2/2 cells" in o and "class easy" in o and f"comparison: {reports[0]}" in o
    assert "cell 1/2: profile=rllm-7b" in progress.getvalue()
    assert "cell 2/2: profile=llm-7b" in progress.getvalue()
