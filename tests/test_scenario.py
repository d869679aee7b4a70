"""Scenario files: every shipped one loads, and every mistake is a one-line UserError naming file and field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import (
    OVERRIDE_FLAGS,
    Scenario,
    list_scenarios,
    load_scenario,
    matrix_cells,
    scenario_dirs,
)

SHIPPED = (
    "default",
    "pilot-llm-vs-rllm",
    "gamma-easy",
    "gamma-medium",
    "gamma-hard",
    "gamma-mcq",
    "stragglers",
    "opt-quantization",
    "opt-kv-fp8",
    "opt-prefix-caching",
    "opt-speculative",
    "example-url",
    "example-vllm",
    "fleet",
)

MINIMAL = """
[load]
num_prompts = 10

[[classes]]
prompts = "math-easy"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error(tmp_path: Path, text: str, overrides: dict | None = None) -> UserError:
    p = write(tmp_path, text)
    with pytest.raises(UserError) as ei:
        load_scenario(str(p), overrides)
    e = ei.value
    assert "\n" not in e.what and e.hint, "one line saying what, one saying what to do"
    return e


# --------------------------------------------------------------------------------------------- shipped


def test_every_shipped_scenario_is_listed_and_loads() -> None:
    names = [n for n, _ in list_scenarios()]
    for n in SHIPPED:
        assert n in names
    for name, desc in list_scenarios():
        assert desc, f"{name} has no description"
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.text.startswith("#") or "description" in sc.text
        assert sc.classes
        for _cell, s in matrix_cells(sc):
            assert isinstance(s, Scenario)


def test_shipped_scenarios_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_scenario("default").engine.kind == "sim"
    assert scenario_dirs()


def test_shipped_shapes() -> None:
    d = load_scenario("default")
    assert (d.engine.kind, d.engine.profile, d.arrival.process) == ("sim", "rllm-7b", "gamma")
    assert {c.prompts.builtin for c in d.classes} == {"math-easy", "math-medium", "math-hard", "mcq"}
    pilot = load_scenario("pilot-llm-vs-rllm")
    assert [s.engine.profile for _, s in matrix_cells(pilot)] == ["rllm-7b", "llm-7b"]
    assert [s.name for _, s in matrix_cells(pilot)] == [
        "pilot-llm-vs-rllm[profile=rllm-7b]",
        "pilot-llm-vs-rllm[profile=llm-7b]",
    ]
    assert load_scenario("stragglers").arrival.process == "burst"
    kv = [s.engine.kv_cache_dtype for _, s in matrix_cells(load_scenario("opt-kv-fp8"))]
    assert kv == ["auto", "fp8"]
    q = [s.engine.quantization for _, s in matrix_cells(load_scenario("opt-quantization"))]
    assert q == [None, "awq"]
    pc = [s.engine.prefix_caching for _, s in matrix_cells(load_scenario("opt-prefix-caching"))]
    assert pc == [False, True]
    spec = [s.engine.speculative for _, s in matrix_cells(load_scenario("opt-speculative"))]
    assert spec[0] is None and spec[1] is not None and spec[1].method == "ngram"
    assert load_scenario("example-url").engine.kind == "url"
    v = load_scenario("example-vllm").engine
    assert (v.kind, v.reasoning_parser, v.kv_cache_dtype) == ("vllm", "deepseek_r1", "fp8")


def test_defaults_and_text(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL, "my-run.toml")
    sc = load_scenario(str(p))
    assert sc.name == "my-run"
    assert sc.text == MINIMAL
    assert sc.path == str(p)
    assert (sc.engine.kind, sc.arrival.process, sc.arrival.rate, sc.arrival.burstiness) == (
        "sim",
        "gamma",
        1.0,
        1.0,
    )
    assert sc.load.num_prompts == 10 and sc.load.api == "chat" and sc.load.request_seed is None
    c = sc.classes[0]
    assert (c.name, c.max_tokens, c.thinking, c.weight) == ("math-easy", 4096, True, 1.0)


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_key_names_file_field_and_suggests(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "\n[arrival]\nburstyness = 0.5\n")
    assert "s.toml" in e.what and "arrival.burstyness" in e.what and "'burstiness'" in e.what
    assert "burstiness" in e.hint


def test_unknown_top_level_key(tmp_path: Path) -> None:
    e = error(tmp_path, "sed = 3\n" + MINIMAL)
    assert "sed = 3" in e.what and "unknown key" in e.what and "'seed'" in e.what


def test_class_field_dotted_path(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[classes]]\nname = "b"\nprompts = "mcq"\nmax_tokens = -5\n'
    e = error(tmp_path, text)
    assert "classes[1].max_tokens = -5" in e.what and "out of range" in e.what
    assert "integer >= 1" in e.hint


@pytest.mark.parametrize(
    ("snippet", "needle", "allowed"),
    [
        ('[arrival]\nprocess = "gama"\n', "arrival.process", "'gamma'"),
        ("[arrival]\nrate = -1\n", "arrival.rate = -1", "> 0"),
        ('[arrival]\nrate = "fast"\n', "arrival.rate", "a number"),
        ("[arrival]\nburstiness = 0\n", "arrival.burstiness = 0", "> 0"),
        ('[engine]\nkind = "tgi"\n', "engine.kind", "'sglang'"),
        ("[engine]\nspeed = 0\n", "engine.speed = 0", "> 0"),
        ('[engine]\nreasoning_field = "thoughts"\n', "engine.reasoning_field", "reasoning_content"),
        ("[engine.faults]\nerror_rate = 1.5\n", "engine.faults.error_rate = 1.5", "<= 1"),
        ("[engine.faults]\nexplode = 0.1\n", "engine.faults.explode", "drop_rate"),
        ('[engine]\nkv_cache_dtype = "fp4"\n', "engine.kv_cache_dtype", "fp8_e4m3"),
        ("[engine]\ngpu_memory_utilization = 1.2\n", "engine.gpu_memory_utilization = 1.2", "<= 1"),
        ("[engine]\nnice = 20\n", "engine.nice = 20", "<= 19"),
        ("[engine]\nnice = -5\n", "engine.nice = -5", ">= 0"),
        (
            '[engine.speculative]\nmethod = "magic"\nnum_speculative_tokens = 3\n',
            "engine.speculative.method",
            "ngram",
        ),
        ("[load]\nmax_concurrency = 0\n", "load.max_concurrency = 0", ">= 1"),
        ('[load]\napi = "responses"\n', "load.api", "'completions'"),
        ("[load]\nrecord_answers = 1\n", "load.record_answers = 1", "true, false"),
        ("[slo]\nttfvt_p95 = 3\n", "slo.ttfvt_p95", "ttfvt_p99"),
        ("[slo]\naccuracy = 2\n", "slo.accuracy = 2", "<= 1"),
        ("seed = -1\n", "seed = -1", ">= 0"),
        ("seed = 1.5\n", "seed = 1.5", "integer"),
        ('name = "a b"\n', 'name = "a b"', "letters"),
    ],
)
def test_bad_values(tmp_path: Path, snippet: str, needle: str, allowed: str) -> None:
    classes = '\n[[classes]]\nprompts = "math-easy"\n'
    if "[load]" in snippet:
        text = snippet + "num_prompts = 10\n" + classes
    else:
        text = snippet + "\n[load]\nnum_prompts = 10\n" + classes
    e = error(tmp_path, text)
    assert needle in e.what, e.what
    assert allowed in e.hint, e.hint


def test_toml_syntax_error(tmp_path: Path) -> None:
    e = error(tmp_path, "[arrival\nrate = 1\n")
    assert "not valid TOML" in e.what and "line 1" in e.what


def test_classes_missing_and_empty(tmp_path: Path) -> None:
    e = error(tmp_path, "[load]\nnum_prompts = 3\n")
    assert "classes is missing" in e.what
    e = error(tmp_path, "classes = []\n[load]\nnum_prompts = 3\n")
    assert "classes" in e.what and "non-empty" in e.what


def test_duplicate_class_names_and_zero_weights(tmp_path: Path) -> None:
    text = '[load]\nnum_prompts = 3\n[[classes]]\nname = "a"\nprompts = "mcq"\n[[classes]]\nname = "a"\nprompts = "mcq"\n'
    e = error(tmp_path, text)
    assert "classes[1].name" in e.what and "duplicate" in e.what
    text = '[load]\nnum_prompts = 3\n[[classes]]\nprompts = "mcq"\nweight = 0\n'
    assert "weight" in error(tmp_path, text).what


def test_prompt_source_errors(tmp_path: Path) -> None:
    head = "[load]\nnum_prompts = 3\n[[classes]]\n"
    e = error(tmp_path, head + 'prompts = "math-insane"\n')
    assert "classes[0].prompts" in e.what and "math-hard" in e.hint
    e = error(tmp_path, head + 'prompts = { builtin = "mcq", file = "x.jsonl" }\n')
    assert "exactly one" in e.what
    e = error(tmp_path, head + 'prompts = { file = "missing.jsonl" }\n')
    assert "classes[0].prompts.file" in e.what and "no such file" in e.what
    (tmp_path / "d.txt").write_text("x")
    e = error(tmp_path, head + 'prompts = { file = "d.txt" }\n')
    assert "extension" in e.what and "jsonl" in e.hint
    (tmp_path / "d.jsonl").write_text("{}\n")
    e = error(tmp_path, head + 'prompts = { file = "d.jsonl", template = "no placeholder" }\n')
    assert "template" in e.what and "{question}" in e.what
    e = error(tmp_path, head + 'prompts = { builtin = "mcq", question = "q" }\n')
    assert "classes[0].prompts.question" in e.what and "only applies to file datasets" in e.what


def test_file_source_resolved_next_to_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gsm.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    p = write(
        tmp_path,
        '[load]\nnum_prompts = 3\n[[classes]]\nprompts = { file = "data/gsm.jsonl", answer_format = "gsm8k" }\n',
    )
    monkeypatch.chdir("/")
    sc = load_scenario(str(p))
    src = sc.classes[0].prompts
    assert Path(src.file or "").is_absolute() and src.format == "jsonl" and sc.classes[0].name == "gsm"


def test_secrets_are_refused(tmp_path: Path) -> None:
    e = error(tmp_path, 'api_key = "sk-123"\n' + MINIMAL)
    assert "API keys do not belong" in e.what and "OPENAI_API_KEY" in e.hint and "sk-123" not in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "vllm"\nmodel = "m"\n[engine.env]\nHF_TOKEN = "hf_x"\n')
    assert "engine.env.HF_TOKEN" in e.what and "hf_x" not in str(e)


def test_engine_kind_consistency(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "url"\n')
    assert "engine.url is missing" in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "url"\nurl = "localhost:8000"\n')
    assert "not an http(s) URL" in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "url"\nurl = "http://h:1"\nkv_cache_dtype = "fp8"\n')
    assert "engine.kv_cache_dtype" in e.what and "launches" in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "url"\nurl = "http://h:1"\nnice = 10\n')
    assert "engine.nice" in e.what and "launches" in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "vllm"\n')
    assert "engine.model is missing" in e.what
    e = error(tmp_path, MINIMAL + '\n[engine]\nkind = "vllm"\nmodel = "m"\nprofile = "rllm-7b"\n')
    assert "engine.profile" in e.what and "simulator" in e.what


def test_arrival_fields_must_match_process(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + '\n[arrival]\nprocess = "burst"\nrate = 3\n')
    assert "arrival.rate" in e.what and "not used" in e.what and "burst_size" in e.hint
    e = error(tmp_path, MINIMAL + '\n[arrival]\nprocess = "poisson"\nburstiness = 0.5\n')
    assert "poisson means burstiness 1" in e.what
    e = error(tmp_path, MINIMAL + '\n[arrival]\nprocess = "phases"\n')
    assert "arrival.phases is missing" in e.what
    e = error(tmp_path, MINIMAL + '\n[arrival]\nprocess = "trace"\ntrace_file = "nope.csv"\n')
    assert "arrival.trace_file" in e.what and "no such file" in e.what
    text = MINIMAL + '\n[arrival]\nprocess = "phases"\n[[arrival.phases]]\nduration = 5\nrate = -2\n'
    assert "arrival.phases[0].rate = -2" in error(tmp_path, text).what


def test_runs_must_end(tmp_path: Path) -> None:
    e = error(tmp_path, '[[classes]]\nprompts = "mcq"\n')
    assert "never ends" in e.what and "--num-prompts" in e.hint
    e = error(tmp_path, '[arrival]\nrate = inf\n[load]\nduration = 5\n[[classes]]\nprompts = "mcq"\n')
    assert "inf" in e.what and "num_prompts" in e.what
    e = error(tmp_path, '[arrival]\nrescale = true\n[load]\nduration = 5\n[[classes]]\nprompts = "mcq"\n')
    assert "rescale" in e.what
    text = '[arrival]\nprocess = "phases"\n[[arrival.phases]]\nduration = 5\nrate = 0\n[[classes]]\nprompts = "mcq"\n'
    assert "nothing would be sent" in error(tmp_path, text).what


def test_inf_rate_with_num_prompts(tmp_path: Path) -> None:
    p = write(tmp_path, '[arrival]\nrate = inf\n[load]\nnum_prompts = 5\n[[classes]]\nprompts = "mcq"\n')
    assert math.isinf(load_scenario(str(p)).arrival.rate)


# ------------------------------------------------------------------------------------------- overrides


def test_overrides_apply_and_are_recorded_as_provenance(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL)
    sc = load_scenario(
        str(p),
        {
            "request_rate": 7.5,
            "burstiness": 0.25,
            "max_concurrency": 3,
            "num_prompts": 40,
            "duration": 9.0,
            "seed": 11,
            "model": "m1",
            "speed": 20.0,
            "profile": "llm-7b",
            "base_url": None,
        },
    )
    assert (sc.arrival.rate, sc.arrival.burstiness, sc.arrival.process) == (7.5, 0.25, "gamma")
    assert (sc.load.max_concurrency, sc.load.num_prompts, sc.load.duration) == (3, 40, 9.0)
    assert (sc.seed, sc.model, sc.engine.speed, sc.engine.profile) == (11, "m1", 20.0, "llm-7b")
    assert sc.text == MINIMAL, "the text is the file as read; what changed it is the provenance"
    prov = sc.provenance
    assert prov is not None and prov.source == str(p)
    assert dict(prov.overrides)["request_rate"] == "7.5" and dict(prov.overrides)["model"] == '"m1"'
    assert dict(prov.override_flags)["request_rate"] == "--request-rate"
    assert prov.planned_requests == 40 and '"num_prompts":40' in prov.workload
    assert "base_url" not in sc.overrides


def test_poisson_with_burstiness_becomes_gamma(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + '\n[arrival]\nprocess = "poisson"\nrate = 2\n')
    sc = load_scenario(str(p), {"burstiness": 0.5})
    assert (sc.arrival.process, sc.arrival.burstiness) == ("gamma", 0.5)


def test_base_url_override_attaches_and_is_redacted(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + '\n[engine]\nprofile = "rllm-7b"\nkv_cache_dtype = "fp8"\n')
    sc = load_scenario(str(p), {"base_url": "http://user:pw@127.0.0.1:9/"})
    assert (sc.engine.kind, sc.engine.url) == ("url", "http://user:pw@127.0.0.1:9")
    assert sc.provenance is not None
    shown = dict(sc.provenance.overrides)["base_url"]
    assert "pw" not in shown and "//127.0.0.1:9" in shown
    assert sc.text == MINIMAL + '\n[engine]\nprofile = "rllm-7b"\nkv_cache_dtype = "fp8"\n'


def test_override_errors_name_the_flag(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL)
    with pytest.raises(UserError) as ei:
        load_scenario(str(p), {"request_rate": -3.0})
    assert ei.value.what.startswith("--request-rate -3.0: out of range") and "arrival.rate" in ei.value.what
    with pytest.raises(UserError) as ei:
        load_scenario(str(p), {"max_concurrency": 0})
    assert ei.value.what.startswith("--max-concurrency 0")
    p2 = write(tmp_path, MINIMAL + '\n[arrival]\nprocess = "burst"\nburst_size = 4\n', "b.toml")
    with pytest.raises(UserError) as ei:
        load_scenario(str(p2), {"request_rate": 3.0})
    assert "--request-rate does not apply" in ei.value.what
    p3 = write(tmp_path, MINIMAL + '\n[engine]\nkind = "url"\nurl = "http://127.0.0.1:1"\n', "u.toml")
    with pytest.raises(UserError) as ei:
        load_scenario(str(p3), {"speed": 5.0})
    assert "--speed applies to the simulator only" in ei.value.what
    assert set(OVERRIDE_FLAGS) == {
        "request_rate",
        "burstiness",
        "max_concurrency",
        "num_prompts",
        "duration",
        "seed",
        "model",
        "base_url",
        "speed",
        "profile",
        "ramp_up_strategy",
        "ramp_up_start_rate",
        "ramp_up_end_rate",
    }


# ----------------------------------------------------------------------------------------------- matrix


def test_matrix_cartesian_product_dotted_and_quoted_keys(tmp_path: Path) -> None:
    text = (
        MINIMAL + '\n[matrix]\nprofile = ["rllm-7b", "llm-7b"]\n"engine.kv_cache_dtype" = ["auto", "fp8"]\n'
    )
    text += "classes.thinking = [true, false]\n"
    sc = load_scenario(str(write(tmp_path, text)))
    assert set(sc.matrix) == {"profile", "engine.kv_cache_dtype", "classes.thinking"}
    cells = matrix_cells(sc)
    assert len(cells) == 8
    cell, s = cells[-1]
    assert cell == {"profile": "llm-7b", "engine.kv_cache_dtype": "fp8", "classes.thinking": False}
    assert (s.engine.profile, s.engine.kv_cache_dtype, s.classes[0].thinking) == ("llm-7b", "fp8", False)
    assert s.text == text, "every cell keeps the file's text; the cell is in its provenance"
    assert s.provenance is not None
    assert s.provenance.cell_label == "profile=llm-7b,engine.kv_cache_dtype=fp8,classes.thinking=off"
    assert dict(s.provenance.cell)["classes.thinking"] == "false"
    assert s.cell == cell and s.matrix == sc.matrix


def test_matrix_cells_keep_cli_overrides(tmp_path: Path) -> None:
    text = MINIMAL + '\n[matrix]\nprofile = ["rllm-7b", "llm-7b"]\n'
    sc = load_scenario(str(write(tmp_path, text)), {"seed": 5, "speed": 10.0})
    for _, s in matrix_cells(sc):
        assert (s.seed, s.engine.speed) == (5, 10.0)


def test_matrix_bad_cells_fail_at_load(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + '\n[matrix]\n"engine.kv_cache_dtype" = ["auto", "fp3"]\n')
    assert e.what.startswith('[matrix] engine.kv_cache_dtype = "fp3"') and "fp8" in e.hint
    e = error(tmp_path, MINIMAL + '\n[matrix]\n"nothing.here" = [1, 2]\n')
    assert "unknown table 'nothing'" in e.what
    e = error(tmp_path, MINIMAL + "\n[matrix]\nprofile = []\n")
    assert "matrix.profile" in e.what and "non-empty" in e.what


# ----------------------------------------------------------------------------------------------- lookup


def test_unknown_name_suggests_a_shipped_one() -> None:
    with pytest.raises(UserError) as ei:
        load_scenario("defualt")
    assert "no shipped scenario named 'defualt'" in ei.value.what and "'default'" in ei.value.hint
    with pytest.raises(UserError) as ei:
        load_scenario("nowhere/x.toml")
    assert "does not exist" in ei.value.what


# ------------------------------------------------------------------------------------------------ docs


def _readme_blocks() -> list[str]:
    readme = Path(__file__).resolve().parent.parent / "scenarios" / "README.md"
    text = readme.read_text()
    return [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]


def test_readme_dataset_mappings_load(tmp_path: Path) -> None:
    """The column mappings documented for GSM8K, MATH-500, AIME 2024 and GPQA work on files of that shape."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from rllmtop.workload.prompts import load_scenario_prompts

    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_test.jsonl").write_text('{"question": "q", "answer": "so\\n#### 1,200"}\n')
    (data / "math500_test.jsonl").write_text(
        '{"problem": "p", "solution": "s", "answer": "\\\\frac{1}{2}", "subject": "Algebra", "level": 3, '
        '"unique_id": "test/algebra/1.json"}\n'
    )
    pq.write_table(
        pa.table({"id": [60], "problem": ["p"], "solution": ["s"], "answer": ["204"]}),
        data / "aime_2024.parquet",
    )
    (data / "gpqa_diamond.csv").write_text(
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "rec1,What?,yes,no,maybe,never\n"
    )
    (mapping,) = [b for b in _readme_blocks() if "gsm8k" in b]
    p = tmp_path / "datasets.toml"
    p.write_text("[load]\nnum_prompts = 4\n" + mapping)
    sc = load_scenario(str(p))
    assert [c.name for c in sc.classes] == ["gsm8k", "math500", "aime24", "gpqa"]
    items = load_scenario_prompts(sc)
    assert [i[0].reference for i in items[:3]] == ["1,200", "\\frac{1}{2}", "204"]
    assert [i[0].kind for i in items] == ["number", "number", "number", "choice"]
    assert items[3][0].reference in "ABCD" and items[1][0].id == "test/algebra/1.json"


def test_readme_slo_fleet_and_matrix_examples_load(tmp_path: Path) -> None:
    blocks = [b for b in _readme_blocks() if "gsm8k" not in b]
    assert len(blocks) == 3
    got = []
    for b in blocks:
        p = write(tmp_path, MINIMAL.replace("[[classes]]", b + "\n[[classes]]"))
        sc = load_scenario(str(p))
        if sc.slo:
            got.append("slo")
            assert sc.goodput == {"ttfvt": 30.0, "e2el": 120.0}
        elif sc.matrix:
            got.append("matrix")
            assert len(matrix_cells(sc)) == 16
        else:
            got.append("fleet")
            assert sc.engine.url == "http://router:8000" and len(sc.engine.endpoints) == 2
            assert sc.engine.prometheus is not None and sc.engine.prometheus.selector == '{job="vllm"}'
    assert sorted(got) == ["fleet", "matrix", "slo"]
