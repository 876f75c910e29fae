"""The README cannot drift from the code: options vs `run --help`, job-file keys, columns, codes."""

from __future__ import annotations

import re
from pathlib import Path

import click

from batchrun.cli import cli
from batchrun.running.output import RESULT_NAMES
from batchrun.settings.config import FIELDS

from .helpers import run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


def _section(title: str) -> str:
    """The text of one `## title` section of the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _table(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in a section, as lists of cells."""
    rows = []
    for line in section.splitlines():
        if re.match(r"^\|[-| ]+\|$", line):
            continue  # the line under the header
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    return rows[1:]  # without the header


def _help_options(help_text: str) -> set[str]:
    """Every option name in the Options part of a click --help text."""
    names: set[str] = set()
    body = help_text.split("Options:", 1)[1]
    for line in body.splitlines():
        if not line.startswith("  -"):
            continue  # a wrapped help line
        spec = re.split(r"\s{2,}", line.strip())[0]
        names.update(OPTION.findall(spec))
    return names


def test_option_table_matches_run_help_both_ways() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0, result.stderr
    in_help = _help_options(result.stdout)
    assert {"--input", "--no-dedup", "--log-format", "-h", "--help"} <= in_help
    rows = _table(_section("Options of `batchrun run`"))
    in_readme: set[str] = set()
    for row in rows:
        in_readme.update(OPTION.findall(row[0]))
    assert in_help - in_readme == set(), "options in --help missing from the README table"
    assert in_readme - in_help == set(), "options in the README table that --help does not know"


def test_every_run_option_has_a_help_line() -> None:
    run = cli.commands["run"]
    options = [p for p in run.params if isinstance(p, click.Option)]
    assert len(options) > 30
    for option in options:
        assert option.help and len(option.help) > 10, option.name


def test_job_file_reference_lists_every_key() -> None:
    rows = _table(_section("Job-file reference"))
    documented = {(row[0].strip("`"), row[1].strip("`")) for row in rows}
    expected = {(f"[{f.section}]", f.key or f.name) for f in FIELDS}
    assert expected - documented == set(), "job-file keys missing from the README"
    assert documented - expected == set(), "README lists job-file keys that do not exist"


def test_output_columns_and_exit_codes_are_documented() -> None:
    columns = {row[0].strip("`") for row in _table(_section("Output"))}
    assert columns == set(RESULT_NAMES)
    codes = [row[0] for row in _table(_section("Exit codes"))]
    assert codes == ["0", "1", "2", "3", "75", "130"]


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make demo")
    assert first_block.splitlines()[1].startswith("make test")
    assert text.index("make demo") < text.index("## A five-minute tour")


def test_progress_interval_and_benchmarks_are_explained() -> None:
    logs = _section("Progress and logs")
    assert "BATCHRUN_PROGRESS_EVERY" in logs
    for event in ("start", "progress", "rate_limited", "stop", "finish", "error"):
        assert f"| `{event}` |" in logs
    bench = _section("Benchmarks")
    for script in ("throughput", "ratelimit", "memory", "resume"):
        assert f"benchmarks/{script}.py" in bench
        assert (Path(__file__).resolve().parent.parent / "benchmarks" / f"{script}.py").exists()
