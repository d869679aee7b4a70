"""Provenance is data resolved once at load; the legacy text header is only ever read, never written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.events import Provenance
from rllmtop.scenario import canonical_workload, load_scenario, matrix_cells, provenance_from_text

from .conftest import MINIMAL, Loader


def test_text_is_the_file_and_provenance_says_what_changed(load: Loader) -> None:
    sc = load(MINIMAL + '\n[matrix]\nprofile = ["rllm-7b", "llm-7b"]\n', {"seed": 3, "request_rate": 2.0})
    assert not sc.text.startswith("#") and sc.text.startswith("[load]")
    p = sc.provenance
    assert p is not None
    assert p.overrides == (("seed", "3"), ("request_rate", "2.0"))
    assert p.override_flags == (("seed", "--seed"), ("request_rate", "--request-rate"))
    assert p.cell == () and p.cell_label == "" and p.planned_requests == 10
    assert Provenance.from_json(p.to_json()) == p
    for cell, s in matrix_cells(sc):
        assert s.text == sc.text and s.provenance is not None
        assert s.provenance.cell == (("profile", f'"{cell["profile"]}"'),)
        assert s.provenance.overrides == p.overrides and s.provenance.source == p.source


def test_source_is_the_name_or_path_as_given() -> None:
    sc = load_scenario("default")
    assert sc.provenance is not None and sc.provenance.source == "default"
    assert sc.provenance.planned_requests is None, "duration only: open-ended"
    assert load_scenario("stragglers").provenance.planned_requests == 128  # type: ignore[union-attr]
    # conversations: num_prompts counts arrivals, not the turns the runner will send (drawn per chat)
    chats = load_scenario("chat-multiturn")
    assert chats.load.num_prompts is not None
    assert chats.provenance.planned_requests is None  # type: ignore[union-attr]


def test_same_workload_compares_equal(load: Loader) -> None:
    a = load(MINIMAL)
    b = load(
        MINIMAL.replace("[load]\n", "[load]\ngrace_period = 5\nworkers = 2\n")
        + '\n[engine]\nprofile = "llm-7b"\n'
    )
    c = load(MINIMAL, {"request_rate": 3.0})
    assert a.provenance is not None and b.provenance is not None and c.provenance is not None
    assert a.provenance.workload == b.provenance.workload, "run control and the engine are not the workload"
    assert a.provenance.workload != c.provenance.workload
    assert a.provenance.workload_digest != c.provenance.workload_digest
    assert canonical_workload({"load": {"timeout": 3, "num_prompts": 1}}) == canonical_workload(
        {"load": {"num_prompts": 1}}
    )


LEGACY = (
    "# rllmtop: overrides: --request-rate 7.5 --model my model --num-prompts 40\n"
    "# rllmtop: matrix cell: profile=llm-7b,classes.thinking=off\n" + MINIMAL
)


def test_legacy_header_is_read() -> None:
    p = provenance_from_text(LEGACY, "pilot")
    assert p is not None
    assert dict(p.overrides) == {"request_rate": "7.5", "model": '"my model"', "num_prompts": "40"}
    assert dict(p.override_flags)["num_prompts"] == "--num-prompts"
    assert p.cell_label == "profile=llm-7b,classes.thinking=off"
    assert p.planned_requests == 40 and '"rate":7.5' in p.workload and p.source == "pilot"
    plain = provenance_from_text(MINIMAL)
    assert plain is not None and plain.overrides == () and plain.planned_requests == 10


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not toml [",
        "x = " + "[" * 1000 + "]" * 1000,
        "# rllmtop: overrides: --seed\n[[[",
        "a = 1\n" * 20_000,
    ],
)
def test_legacy_reader_never_raises(text: str) -> None:
    got = provenance_from_text(text)
    assert got is None or isinstance(got, Provenance)


def test_legacy_reader_keeps_what_it_can() -> None:
    p = provenance_from_text("# rllmtop: overrides: --seed x\n[load]\nnum_prompts = 2\n")
    assert p is not None and dict(p.overrides) == {"seed": '"x"'} and p.planned_requests is None


def test_the_recorded_workload_rebuilds_its_scenario_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`workload_scenario` (what `sim calibrate` rebuilds prompts from): a shipped scenario's trace and a
    file's relative prompt set resolve where the scenario was, whatever the working directory."""
    from rllmtop.scenario.provenance import workload_scenario
    from rllmtop.workload.prompts import load_scenario_prompts

    (tmp_path / "p.jsonl").write_text(
        '{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 * 3?", "answer": "9"}\n'
    )
    f = tmp_path / "mine.toml"
    f.write_text(
        'name = "mine"\nseed = 4\n[load]\nnum_prompts = 5\n[[classes]]\nname = "own"\nprompts = { file = "p.jsonl" }\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for sc in (load_scenario("fleet", {"num_prompts": 7}), load_scenario(str(f), {"seed": 9})):
        assert sc.provenance is not None
        again = workload_scenario(sc.provenance)
        assert (again.seed, again.arrival, again.load.api) == (sc.seed, sc.arrival, sc.load.api)
        assert [c.name for c in again.classes] == [c.name for c in sc.classes]
        assert load_scenario_prompts(again) == load_scenario_prompts(sc)
    bad = dataclasses.replace(sc.provenance, workload='{"classes": 3}')
    with pytest.raises(UserError, match=r"the workload recorded from .*mine\.toml: classes"):
        workload_scenario(bad)
