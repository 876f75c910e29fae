"""The README and the references in docs/ cannot drift from the code: options vs `run --help`,
job-file keys, columns, codes, events, benchmarks, and the tour the README promises."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import click
import pytest

from batchrun.cli import cli
from batchrun.running.output import CACHED_FIELD, ENDPOINT_FIELD, RESULT_NAMES
from batchrun.settings.config import FIELDS
from batchrun.settings.endpoints import ENDPOINT_SETTINGS

from .helpers import clean_env, journal_count, run_cli, start_cli, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")
SECTION_NAME = re.compile(r"`?\[([a-z_]+)\]`?")


def section(path: Path, title: str) -> str:
    """The text of one `## title` section of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in a text, as lists of cells."""
    return tables(text)[0][1] if tables(text) else []


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in a text: (header cells, body rows), each under the heading line
    it follows kept as the header's context in `heading_of`."""
    found: list[tuple[list[str], list[list[str]]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not re.match(r"^\|[-:| ]+\|$", line):  # the line under the header is not a row
                rows.append(_cells(line))
        elif rows:
            found.append((rows[0], rows[1:]))
            rows = []
    return found


def help_options(help_text: str) -> dict[str, str]:
    """Every option name in the Options part of a click --help text, with its spec (the option's
    names and metavar, as `--row-deadline FLOAT`)."""
    names: dict[str, str] = {}
    body = help_text.split("Options:", 1)[1]
    for line in body.splitlines():
        if not line.startswith("  -"):
            continue  # a wrapped help line
        spec = re.split(r"\s{2,}", line.strip())[0]
        for name in OPTION.findall(spec):
            names[name] = spec
    return names


def _doc_options(path: Path) -> dict[str, str]:
    """The options a reference documents: each table row whose first cell names one, with that
    cell and the row's Value cell if it has one (backticks and escapes dropped)."""
    found: dict[str, str] = {}
    for header, rows in tables(path.read_text(encoding="utf-8")):
        value_at = header.index("Value") if "Value" in header else None
        for row in rows:
            cell = row[0].replace("`", "").replace("\\|", "|")
            if value_at is not None and row[value_at]:  # the value's name in a column of its own
                cell += " " + row[value_at].replace("`", "").replace("\\|", "|")
            if cell.startswith("-"):
                for name in OPTION.findall(cell.split(" [", 1)[0]):
                    found[name] = cell
    return found


def test_option_reference_matches_run_help_both_ways() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0, result.stderr
    in_help = help_options(result.stdout)
    assert {"--input", "--no-dedup", "--log-format", "-h", "--help"} <= set(in_help)
    documented = _doc_options(DOCS / "options.md")
    assert set(in_help) - set(documented) == set(), "options in --help missing from docs/options.md"
    assert set(documented) - set(in_help) - {"--format"} == set(), (
        "options in docs/options.md that `run --help` does not know")
    # A value is named as --help names it (`--row-deadline FLOAT`, not SECONDS; the choices).
    for name, cell in documented.items():
        if name in in_help:
            assert _value_words(cell) == _value_words(in_help[name]), (
                f"docs/options.md: {cell!r}, --help: {in_help[name]!r}")


def _value_words(spec: str) -> list[str]:
    """The words of an option spec besides its names and remarks: `FLOAT`, or the choices."""
    return re.findall(r"[\w.]+", OPTION.sub(" ", re.sub(r"\([^)]*\)", " ", spec)))



def test_plan_takes_runs_options_and_format_json_is_documented() -> None:
    run_help = help_options(run_cli("run", "--help").stdout)
    plan_help = help_options(run_cli("plan", "--help").stdout)
    assert set(plan_help) == set(run_help) | {"--format"}
    options = (DOCS / "options.md").read_text(encoding="utf-8")
    assert "--format" in options and "json" in options
    assert "--format json" in section(README, "A five-minute tour")
    assert "--format json" in section(README, "Commands")


def test_every_run_option_has_a_help_line() -> None:
    run = cli.commands["run"]
    options = [p for p in run.params if isinstance(p, click.Option)]
    assert len(options) > 30
    for option in options:
        assert option.help and len(option.help) > 10, option.name


def documented_keys(path: Path) -> set[tuple[str, str]]:
    """(section, key) pairs of the job-file tables in a reference: rows of a table with a Key
    column, whose section is the row's own `[section]` cell or the heading the table is under."""
    pairs: set[tuple[str, str]] = set()
    text = path.read_text(encoding="utf-8")
    heading = ""
    blocks = re.split(r"(?m)^(#+ .*)$", text)
    for block in blocks:
        if re.match(r"#+ ", block):
            heading = block
            continue
        for header, rows in tables(block):
            names = [h.strip("`* ").lower() for h in header]
            if "key" not in names:
                continue
            key_at = names.index("key")
            section_at = names.index("section") if "section" in names else None
            for row in rows:
                if section_at is not None:
                    match = SECTION_NAME.fullmatch(row[section_at])
                else:
                    match = SECTION_NAME.search(heading)
                assert match, f"{path.name}: no section for {row}"
                pairs.add((f"[{match.group(1)}]", row[key_at].strip("`")))
    return pairs


def test_job_file_reference_lists_every_key() -> None:
    documented = documented_keys(DOCS / "job-file.md")
    expected = {(f"[{f.section}]", f.key or f.name) for f in FIELDS}
    expected |= {(f"[{s.section}]", s.key) for s in ENDPOINT_SETTINGS}  # the [[endpoints]] tables
    assert expected - documented == set(), "job-file keys missing from docs/job-file.md"
    assert documented - expected == set(), "docs/job-file.md lists job-file keys that do not exist"


def test_output_columns_and_exit_codes_are_documented() -> None:
    columns = {row[0].strip("`") for row in _table(section(DOCS / "output.md", "Output"))}
    assert columns == {*RESULT_NAMES, ENDPOINT_FIELD.name, CACHED_FIELD.name}
    codes = [row[0] for row in _table(section(README, "Exit codes"))]
    assert codes == ["0", "1", "2", "3", "75", "130"]


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make demo")
    assert first_block.splitlines()[1].startswith("make test")
    assert text.index("make demo") < text.index("## A five-minute tour")


def test_install_section_says_what_each_command_installs() -> None:
    install = section(README, "Install")
    for line in ("pip install -e .", "pip install -e '.[report]'", "pip install -e '.[ray]'"):
        assert line in install
    two = section(README, "Try it: two commands")
    assert "needs only Python 3.11 or newer and `make`" in two.split("`make test`")[0]
    assert "chromium" in two and "apt-get" in two


def test_progress_interval_and_benchmarks_are_explained() -> None:
    logs = (DOCS / "logs.md").read_text(encoding="utf-8")
    assert "BATCHRUN_PROGRESS_EVERY" in logs
    for event in ("start", "progress", "rate_limited", "stop", "finish", "error"):
        assert f"| `{event}` |" in logs
    bench = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert {"throughput", "ratelimit", "memory", "resume"} <= scripts
    for script in scripts:
        assert f"benchmarks/{script}.py" in bench, f"benchmarks/{script}.py has no section"


def _tour_commands(step: int) -> list[list[str]]:
    """The `batchrun ...` commands of one numbered step of the README's tour, as argv lists."""
    tour = section(README, "A five-minute tour")
    text = tour.split(f"**{step}. ", 1)[1].split(f"**{step + 1}. ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("batchrun "):
                commands.append(line.split()[1:])
    assert commands, f"step {step} of the tour runs no batchrun command"
    return commands


@pytest.mark.slow  # the demo job's own pace: about 10 s of sending
def test_the_tour_shows_what_each_step_claims(tmp_path: Path) -> None:
    """Steps 1-4 as written, from a copy of the repository's demo job, right after `make demo`
    (which answered out/demo.parquet, not the tour's output)."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs" / "demo.toml").write_text((ROOT / "jobs" / "demo.toml").read_text())
    (tmp_path / "data" / "reviews.csv").write_bytes((ROOT / "data" / "reviews.csv").read_bytes())
    # `make demo`'s run, at a pace that keeps the test short: the state it leaves is the same.
    demo = run_cli("run", "jobs/demo.toml", "--fresh", "--no-progress", "--rpm", "60000",
                   cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr

    [plan, *_] = _tour_commands(1)
    planned = run_cli(*plan, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "to send   300 requests now" in planned.stdout

    [interrupted] = _tour_commands(2)
    output = tmp_path / "out" / "tour.parquet"
    proc = start_cli(*interrupted, cwd=tmp_path, env=clean_env())
    wait_until(lambda: journal_count(output) >= 30, proc)
    proc.send_signal(signal.SIGINT)  # the reader's Ctrl-C
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    answered = journal_count(output)
    assert 30 <= answered < 300

    [status] = _tour_commands(3)
    shown = run_cli(*status, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"{answered} answered, 0 failed, {300 - answered} left" in shown.stdout

    [again] = _tour_commands(4)
    resumed = run_cli(*again, "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({answered} answered by earlier runs, not sent again)" in resumed.stdout
    assert f"requests  {300 - answered} sent" in resumed.stdout
