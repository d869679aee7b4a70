"""Every bound of ``rllmtop.scenario.limits`` is checked at load, fast, in one line naming the field.

The inputs are those of issue 11.4 (each crashed, hung or was accepted before): TOML nested 1,000 deep,
100k-character names, a matrix of 10^6 cells, ``limit = 1000000``, ``duration = 1e9``, ``time_scale =
1e308``, ``num_prompts = 1e9`` with ``rate = inf``, nan/inf where a finite number is needed, a raw newline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import limits as L
from rllmtop.scenario import load_scenario, matrix_cells

from .conftest import MINIMAL, Failer, Loader, one_line_error

CLS = '\n[[classes]]\nprompts = "math-easy"\n'
N = "\n[load]\nnum_prompts = 10\n"


def timed_fail(fail: Failer, text: str, overrides: dict[str, object] | None = None) -> UserError:
    t = time.perf_counter()
    e = fail(text, overrides)
    assert time.perf_counter() - t < 2.0, "refused at once (2 s allows a loaded machine)"
    return e


@pytest.mark.parametrize("opener", ["[", "{a = "])
def test_deep_nesting(fail: Failer, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    e = timed_fail(fail, "x = " + opener * 1000 + "1" + closer * 1000 + "\n" + MINIMAL)
    assert "nested too deeply" in e.what and f"at most {L.MAX_DEPTH}" in e.hint
    # below the reader's recursion limit but above ours: the document check names the place
    e = timed_fail(fail, "x = " + opener * 40 + "1" + closer * 40 + "\n" + MINIMAL)
    assert "x" in e.what and f"more than {L.MAX_DEPTH} levels" in e.what


def test_deep_dotted_keys(fail: Failer) -> None:
    # the TOML reader's time grows with the square of a dotted key's parts: 100k parts took minutes
    e = timed_fail(fail, MINIMAL + "a" + ".a" * 100_000 + " = 1\n")
    assert "line 6: a dotted key of 100,001 parts" in e.what and f"at most {L.MAX_DEPTH}" in e.hint
    e = timed_fail(fail, '"a"' + '."a"' * 50_000 + " = 1\n" + MINIMAL)
    assert "line 1: a dotted key of 50,001 parts" in e.what
    e = timed_fail(fail, "a" + ".a" * 40 + " = 1\n" + MINIMAL)
    assert f"more than {L.MAX_DEPTH} levels" in e.what and len(e.what) < 400


def test_dots_in_values_and_strings_are_not_keys(load: Loader) -> None:
    sc = load(f'description = "{"." * 1000} = x"\n' + MINIMAL)
    assert sc.description.startswith("...")
    many = ", ".join(["0.5"] * 300)
    sc = load(MINIMAL + f"chat_template_kwargs.v = [\n{many}, {{a.b = 1}},\n 2 ]  # a.b.c = 1\nweight = 2\n")
    assert sc.classes[0].chat_template_kwargs["v"][-2:] == [{"a": {"b": 1}}, 2] and sc.classes[0].weight == 2
    text = 'description = """\n' + "a" + ".a" * 300 + ' = 1\n"""\n' + MINIMAL
    assert load(text).description.startswith("a.a")


@pytest.mark.parametrize("field", ["model", "name", "description"])
def test_huge_strings_are_refused_and_shortened(fail: Failer, field: str) -> None:
    e = timed_fail(fail, f'{field} = "' + "a-" * 50_000 + '"\n' + MINIMAL)
    assert f"{field} = " in e.what and "100,000 characters" in e.what and len(e.what) < 400


def test_length_caps_per_kind_of_string(load: Loader, fail: Failer) -> None:
    assert load('description = "' + "d" * 60_000 + '"\n' + MINIMAL).description == "d" * 60_000
    e = fail('model = "' + "m" * (L.MAX_STRING_CHARS + 1) + '"\n' + MINIMAL)
    assert "model" in e.what and f"{L.MAX_STRING_CHARS:,}" in e.hint
    e = fail('name = "' + "n" * (L.MAX_NAME_CHARS + 1) + '"\n' + MINIMAL)
    assert f"at most {L.MAX_NAME_CHARS}" in e.hint
    e = fail('"' + "k" * 300 + '" = 1\n' + MINIMAL)
    assert "a key of 300 characters" in e.what and len(e.what) < 300


def test_newlines_and_control_characters_stay_on_one_line(fail: Failer) -> None:
    e = fail('model = "a\\nb\\u2028c\\u202ed"\nseed = "x\\ny"\n' + MINIMAL)
    assert 'seed = "x\\ny"' in e.what, e.what
    e = fail('"bad\\nkey" = 1\n' + MINIMAL)
    assert '"bad\\nkey"' in e.what and "unknown key" in e.what
    e = fail(MINIMAL + '\n[engine]\nkind = "url"\nurl = "http://h:1/\\n"\n')
    assert "not an http(s) URL" in e.what
    e = fail(MINIMAL + '\n[engine]\nprofile = "rllm\\u0000"\n')
    assert "control characters" in e.what and "\\x00" in e.what


def test_file_size_and_encoding(tmp_path: Path) -> None:
    p = tmp_path / "big.toml"
    p.write_text(MINIMAL + "# " + "x" * L.MAX_FILE_BYTES + "\n")
    with pytest.raises(UserError) as ei:
        load_scenario(str(p))
    one_line_error(ei.value, "big.toml")
    assert f"larger than {L.MAX_FILE_BYTES:,} bytes" in ei.value.what
    p.write_bytes(b"\xff\xfe" + MINIMAL.encode())
    with pytest.raises(UserError) as ei:
        load_scenario(str(p))
    assert "not UTF-8" in ei.value.what
    p.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_scenario(str(p)).text == MINIMAL, "a byte-order mark is dropped"


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        t = time.perf_counter()
        with pytest.raises(UserError) as ei:
            load_scenario(str(target))
        assert time.perf_counter() - t < 2.0, "a FIFO must not block the loader"
        assert "not a regular file" in ei.value.what or "is a directory" in ei.value.what
    with pytest.raises(UserError) as ei:
        load_scenario("x" * 5000 + ".toml")
    assert "does not exist" in ei.value.what and len(ei.value.what) < 300


def test_sizes_of_tables_lists_and_the_file(fail: Failer) -> None:
    many = ", ".join(f'"--a{i}"' for i in range(L.MAX_ITEMS + 1))
    e = fail(MINIMAL + f"\n[engine]\nargs = [{many}]\n")
    assert "engine.args" in e.what and f"{L.MAX_ITEMS + 1:,} entries" in e.what
    tables = "".join(f"[t{i}]\n" + "".join(f"k{j} = {j}\n" for j in range(1000)) for i in range(11))
    e = fail(tables + MINIMAL)
    assert f"more than {L.MAX_VALUES:,} values" in e.what
    classes = "".join(f'[[classes]]\nname = "c{i}"\nprompts = "mcq"\n' for i in range(L.MAX_CLASSES + 1))
    assert "classes" in fail("[load]\nnum_prompts = 3\n" + classes).what


def test_matrix_cell_cap_counts_before_building(fail: Failer, load: Loader) -> None:
    vals = ", ".join(str(0.1 + i / 100) for i in range(10))
    text = MINIMAL + "\n[matrix]\nclasses.temperature = [" + vals + "]\n"
    text += "".join(
        f"engine.faults.{k} = [" + ", ".join(str(i / 100) for i in range(10)) + "]\n"
        for k in ("error_rate", "stall_rate", "drop_rate", "rate_limit_rate", "stall_seconds")
    )
    e = timed_fail(fail, text)
    assert "[matrix] has 1,000,000 cells" in e.what and "256" in e.hint
    ok = load(MINIMAL + "\n[matrix]\nseed = [" + ", ".join(str(i) for i in range(L.MAX_MATRIX_CELLS)) + "]\n")
    assert len(matrix_cells(ok)) == L.MAX_MATRIX_CELLS


def test_matrix_values_are_validated_in_every_cell(fail: Failer) -> None:
    e = fail(MINIMAL + "\n[matrix]\nseed = [1, 2]\nclasses.temperature = [0.5, nan]\n")
    assert e.what.startswith("[matrix] classes.temperature = nan: not a number")


@pytest.mark.parametrize(
    ("text", "needle", "hint"),
    [
        (
            '[load]\nnum_prompts = 3\n[[classes]]\nprompts = { builtin = "mcq", limit = 1000000 }\n',
            "classes[0].prompts.limit = 1000000",
            "<= 10,000",
        ),
        (
            '[arrival]\nprocess = "phases"\n[[arrival.phases]]\nduration = 1e9\nrate = 1\n' + CLS,
            "arrival.phases[0].duration = 1000000000.0",
            "<= 604,800",
        ),
        (
            '[arrival]\nprocess = "phases"\n'
            + "[[arrival.phases]]\nduration = 600000\nrate = 0.001\n" * 2
            + CLS,
            "arrival.phases last 1,200,000 s together",
            "604,800",
        ),
        (
            "[arrival]\nrate = inf\n[load]\nnum_prompts = 1000000000\n" + CLS,
            "load.num_prompts = 1000000000",
            "<= 1,000,000",
        ),
        (
            "[arrival]\nrate = 100000\n[load]\nduration = 3600\n" + CLS,
            "the run plans about 360,000,000 requests",
            "1,000,000",
        ),
        (
            "[arrival]\nrate = 1e-300\n[load]\nnum_prompts = 5\n" + CLS,
            "the schedule would span about 5e+300 s",
            "604,800",
        ),
        (
            '[arrival]\nprocess = "burst"\nburst_size = 1000\nburst_interval = 0.001\n[load]\nduration = 600\n'
            + CLS,
            "the run plans about 600,001,000 requests",
            "1,000,000",
        ),
        (
            '[arrival]\nprocess = "burst"\nburst_size = 1\nburst_interval = 600000\n[load]\nnum_prompts = 3\n'
            + CLS,
            "the schedule would span about 1,200,000 s",
            "604,800",
        ),
        (
            '[arrival]\nprocess = "phases"\nrepeat_phases = true\n[[arrival.phases]]\nduration = 1\nrate = 1e300\n[load]\nduration = 10\n'
            + CLS,
            "the run plans about 1e+301 requests",
            "1,000,000",
        ),
        (
            "[load]\nnum_prompts = 100000\n[[classes]]\nprompts = 'mcq'\nconversation = { turns = 20 }\n",
            "2,000,000 requests",
            "1,000,000",
        ),
        ("[load]\nnum_prompts = 3\ntimeout = 1e308\n" + CLS, "load.timeout = 1e+308", "<= 86,400"),
        ("[load]\nduration = inf\n" + CLS, "load.duration = inf: must be finite", "<= 604,800"),
        ("[load]\nduration = nan\n" + CLS, "load.duration = nan: not a number", "> 0"),
        ("seed = 1e300\n" + N + CLS, "seed = 1e+300: out of range", "9,223,372,036,854,775,807"),
        ("scrape_interval = 0\n" + N + CLS, "scrape_interval = 0", ">= 0.01"),
        (N + CLS + "weight = inf\n", "classes[0].weight = inf: must be finite", "<= 1,000,000"),
        (N + CLS + "max_tokens = 1e300\n", "classes[0].max_tokens = 1e+300: out of range", "<= 10,000,000"),
        (N + CLS + "[engine]\nmax_model_len = 1e12\n", "engine.max_model_len", "<= 2,147,483,647"),
        (N + CLS + "[engine.faults]\nstall_seconds = 1e9\n", "engine.faults.stall_seconds", "<= 86,400"),
        (N + CLS + "[engine]\nspeed = inf\n", "engine.speed = inf: must be finite", "<= 1,000,000"),
    ],
)
def test_run_bounds(fail: Failer, text: str, needle: str, hint: str) -> None:
    e = timed_fail(fail, text)
    assert needle in e.what, e.what
    assert hint in e.hint, e.hint


def test_bounds_name_the_flag_that_set_them(fail: Failer) -> None:
    e = fail("[arrival]\nrate = 50\n" + CLS, {"duration": 86_400.0})
    assert "the run plans about 4,320,000 requests" in e.what and "--duration 86400.0" in e.what
    e = fail(MINIMAL, {"num_prompts": 10**9})
    assert e.what.startswith("--num-prompts 1000000000: out of range (sets load.num_prompts of")
    e = fail(MINIMAL, {"request_rate": float("nan")})
    assert e.what.startswith("--request-rate nan: not a number")
