"""Job files: sections, types, unknown keys, paths relative to the job file, flags over the file."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from batchrun.cli import cli
from batchrun.errors import UsageError
from batchrun.settings.config import SETTINGS, build_config
from batchrun.settings.prices import Price

from .helpers import TEST_KEY, clean_env, prompts_csv, read_output, run_cli, write_csv


def job(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_run_options_are_the_declared_settings_and_each_has_a_job_file_key() -> None:
    declared = {flag for s in SETTINGS if s.flag for flag in s.flag.split("/")}
    assert {"--input", "--model", "--stop", "--dedup", "--no-dedup", "--no-progress"} <= declared
    for command, own in (("run", set()), ("plan", {"--format"})):
        params = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
        flags = {flag for p in params for flag in (*p.opts, *p.secondary_opts)}
        assert flags - {"-h", "--help"} - own == declared, command
    places = [(s.section, s.key) for s in SETTINGS]
    assert len(set(places)) == len(places)  # no two settings share a key
    assert {s.section for s in SETTINGS} == {"input", "output", "request", "provider", "limits",
                                              "retry", "pricing", "run"}
    assert {s.name: s.section for s in SETTINGS}["tools"] == "request"
    assert {s.name: s.section for s in SETTINGS}["tool_choice"] == "request"


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--max-cost", "--timeout", "--row-deadline"])
def test_an_infinite_limit_is_refused_in_one_line(tmp_path: Path, sim, flag: str) -> None:
    server = sim()
    result = run_cli("run", "--input", prompts_csv(tmp_path / "in.csv", 2), "--output",
                     tmp_path / "out.parquet", "--base-url", server.base_url, "--model", "sim-1",
                     flag, "inf", "--no-progress")
    assert result.returncode == 2
    assert result.stderr == f"batchrun: {flag} must be a finite number greater than 0 (got inf)\n"
    assert server.stats.requests == 0 and not (tmp_path / "out.parquet").exists()


def test_a_full_job_file_sets_every_section(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    prompts_csv(tmp_path / "data" / "in.csv", 3)
    (tmp_path / "key").write_text("k")
    (tmp_path / "key").chmod(0o600)
    path = job(tmp_path, """
[input]
path = "data/in.csv"
template = "Say: {prompt}"
system = "Be brief."
id_column = "id"
encoding = "utf-8"
[output]
path = "out/result.parquet"
[provider]
name = "openai"
base_url = "https://example.test/v1"
api_key_file = "key"
[request]
model = "gpt-4o"
temperature = 0
max_tokens = 50
top_p = 0.9
frequency_penalty = 0.5
presence_penalty = -0.5
stop = ["END", "###"]
seed = 7
response_format = "json_object"
[limits]
rpm = 100
tpm = 50_000
concurrency = 4
timeout = 30
max_cost = 1.5
max_total_tokens = 10_000
[retry]
max_attempts = 3
[pricing]
input_per_million = 1
output_per_million = 4
[run]
fresh = true
retry_failed = true
dedup = false
progress = false
log_format = "json"
log_level = "info"
""")
    c = build_config(path, {})
    assert c.input == tmp_path / "data" / "in.csv"
    assert c.output == tmp_path / "out" / "result.parquet"
    assert c.api_key_file == tmp_path / "key"
    assert (c.template, c.system, c.id_column, c.model, c.base_url) == (
        "Say: {prompt}", "Be brief.", "id", "gpt-4o", "https://example.test/v1")
    assert (c.temperature, c.max_tokens, c.top_p, c.frequency_penalty, c.presence_penalty) == (
        0, 50, 0.9, 0.5, -0.5)
    assert (c.stop, c.seed, c.response_format) == (("END", "###"), 7, "json_object")
    assert (c.rpm, c.tpm, c.concurrency, c.timeout, c.max_cost, c.max_total_tokens) == (
        100, 50_000, 4, 30, 1.5, 10_000)
    assert (c.max_attempts, c.price) == (3, Price(1.0, 4.0))
    assert (c.fresh, c.retry_failed, c.dedup, c.progress, c.log_format, c.log_level) == (
        True, True, False, False, "json", "info")


def test_relative_paths_are_relative_to_the_job_file_and_flags_to_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs" / "schemas").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs" / "schemas" / "s.json").write_text('{"type": "object"}')
    path = job(tmp_path / "jobs", """
[input]
path = "../data/in.csv"
[request]
model = "m"
response_format = "schemas/s.json"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = build_config(path, {})
    assert c.input.resolve() == (tmp_path / "data" / "in.csv").resolve()
    assert c.schema == {"type": "object"}
    c = build_config(path, {"input": "mine.csv", "output": "o.parquet"})
    assert (c.input, c.output) == (Path("mine.csv"), Path("o.parquet"))


def test_flags_override_the_job_file(tmp_path: Path) -> None:
    path = job(tmp_path, """
[input]
path = "in.csv"
[request]
model = "from-file"
temperature = 0.5
stop = "X"
[limits]
concurrency = 3
""")
    c = build_config(path, {"model": "from-flag", "concurrency": 9, "stop": ("A", "B"),
                            "temperature": None})
    assert (c.model, c.concurrency, c.stop, c.temperature) == ("from-flag", 9, ("A", "B"), 0.5)


@pytest.mark.parametrize("text, needle", [
    ('[input]\npath = "in.csv"\nprompt_colum = "p"\n', "unknown key 'prompt_colum' in [input]"),
    ('[inputs]\npath = "in.csv"\n', "unknown section [inputs]"),
    ('model = "m"\n', "top-level key 'model' must be a section"),
    ('[input]\npath = "in.csv"\n[limits]\nrpm = "fast"\n', "[limits] rpm must be"),
    ('[input]\npath = "in.csv"\n[request]\nmax_tokens = 1.5\n', "[request] max_tokens must be"),
    ('[input]\npath = "in.csv"\n[run]\nfresh = "yes"\n', "[run] fresh must be true or false"),
    ('[input]\npath = "in.csv"\n[limits]\nconcurrency = true\n', "not a boolean"),
    ('[input]\npath = "in.csv"\n[request]\ntemperature = 3\n', "temperature must be in [0, 2]"),
    ('[input]\npath = "in.csv"\n[limits]\nrpm = inf\n', "[limits] rpm must be a finite number"),
    ('[input]\npath = "in.csv"\n[limits]\nmax_cost = inf\n', "max_cost must be a finite number"),
    ('[input]\npath = "in.csv"\n[pricing]\ninput_per_million = inf\noutput_per_million = 1\n',
     "[pricing] input_per_million must be a finite number"),
    ('[input]\npath = "in.csv"\n[request]\nstop = ["a","b","c","d","e"]\n',
     "allows at most 4 sequences (got 5: 'a', 'b', 'c', 'd', 'e')"),
    ('[input\npath = 1\n', "is not valid TOML"),
    ('[input]\npath = "in.csv"\n[request]\ntools = [{type = "function"}]\n',
     "[request] tools entry 0 must be"),
    ('[input]\npath = "in.csv"\n[request]\ntool_choice = "always"\n', "tool_choice must be one"),
    ('[input]\npath = "in.csv"\n[request]\nmodel = "m"\ntool_choice = "auto"\n',
     "tool_choice needs tools"),
    ('[input]\npath = "in.csv"\n[request]\nmodel = "m"\n[pricing]\ninput_per_million = 1\n',
     "needs both input_per_million and output_per_million"),
    ('[input]\npath = "in.csv"\n[request]\nmodel = "my-own-model"\n[limits]\nmax_cost = 1\n',
     "--max-cost needs a price, and model my-own-model has no built-in one: give it in a job "
     "file's [pricing] section (input_per_million and output_per_million; no flag sets a price), "
     "or use --max-total-tokens"),
])
def test_bad_job_files_name_the_file_and_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = job(tmp_path, text)
    with pytest.raises(UsageError) as err:
        build_config(path, {"model": "gpt-4o"} if "model" not in text else {})
    assert needle in err.value.message
    if "needs" not in needle:
        assert str(path) in err.value.message


def test_a_bad_job_file_exits_2_with_one_line_naming_key_and_file(tmp_path: Path, sim) -> None:
    server = sim()
    prompts_csv(tmp_path / "in.csv", 2)
    path = job(tmp_path, '[input]\npath = "in.csv"\n[limits]\nrpm = "lots"\n')
    result = run_cli("run", path, "--base-url", server.base_url, "--model", "sim-1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr and "rpm" in result.stderr
    missing = run_cli("plan", tmp_path / "nope.toml", "--base-url", server.base_url)
    assert missing.returncode == 2 and "nope.toml does not exist" in missing.stderr
    assert server.stats.requests == 0


def test_run_reads_the_job_file_and_flags_win(tmp_path: Path, sim) -> None:
    server = sim()
    (tmp_path / "jobs").mkdir()
    write_csv(tmp_path / "in.csv", [{"id": i, "text": f"item {i}"} for i in range(5)])
    path = job(tmp_path / "jobs", f"""
[input]
path = "../in.csv"
template = "Describe {{text}}"
[output]
path = "../out/file.parquet"
[provider]
base_url = "{server.base_url}"
[request]
model = "sim-1"
max_tokens = 5
""")
    out = tmp_path / "flag.parquet"
    result = run_cli("run", path, "--output", out, "--max-tokens", "3", "--no-progress",
                     cwd=tmp_path / "jobs", env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert not (tmp_path / "out" / "file.parquet").exists()
    assert [r["completion_tokens"] <= 3 for r in rows] == [True] * 5
    assert all(r["finish_reason"] == "length" for r in rows)
    assert server.stats.requests == 5


def test_a_repeated_flag_is_shown_as_the_values_given_not_a_python_tuple(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2)
    stops = [arg for s in "abcde" for arg in ("--stop", s)]
    result = run_cli("plan", "--input", src, "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                     *stops)
    assert result.returncode == 2
    assert result.stderr == ("batchrun: --stop allows at most 4 sequences "
                             "(got 5: 'a', 'b', 'c', 'd', 'e')\n")
    empty = run_cli("plan", "--input", src, "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                    "--stop", "")
    assert empty.stderr == "batchrun: --stop must be non-empty strings (got 1: '')\n"
