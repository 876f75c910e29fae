"""The README and docs/ hold to what exists: the job files they name plan, their links resolve,
their commands and flags are the CLI's, and the architecture page names every module."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pytest

from batchrun.cli import cli

from .helpers import clean_env, run_cli
from .test_readme import help_options, section, tables

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
JOB = re.compile(r"(?<![\w/.-])jobs/[\w/.-]+\.toml")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
COMMAND = re.compile(r"(?<![\w.-])batchrun ([a-z]+)\b([^`#|>&;\n]*)")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """A Markdown text without its fenced code blocks (whose `#` lines are comments)."""
    return FENCE.sub("", text)


def _named_jobs() -> list[str]:
    return sorted({job for page in PAGES for job in JOB.findall(_text(page))})


def test_the_docs_name_job_files() -> None:
    jobs = _named_jobs()
    assert {"jobs/demo.toml", "jobs/nightly.toml", "jobs/megallm.toml"} <= set(jobs)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job files and the data they read, in a folder of their own: `plan` there sees no
    journal of anyone's earlier run."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "jobs", root / "jobs")
    shutil.copytree(ROOT / "data", root / "data")
    return root


@pytest.mark.parametrize("job", _named_jobs())
def test_every_named_job_file_exists_and_plans(job: str, repo_copy: Path) -> None:
    assert (ROOT / job).is_file(), f"{job} is named in the docs but does not exist"
    # No key at all, as a reader checking a job first has none set: plan sends nothing.
    result = run_cli("plan", job, env=clean_env(), cwd=repo_copy)
    assert result.returncode == 0, f"batchrun plan {job}: {result.stderr}"
    assert "requests now" in result.stdout


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    found: set[str] = set()
    for heading in re.findall(r"(?m)^#+ (.*)$", _prose(_text(page))):
        name, n = slug(heading), 1
        while name in found:
            name, n = f"{slug(heading)}-{n}", n + 1
        found.add(name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    for target in LINK.findall(_prose(_text(page))):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        assert where.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(where), f"{page.name}: link to {target}: no such heading"


def test_the_readme_links_every_page_in_docs() -> None:
    readme = _text(README)
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"


def _help(*command: str) -> dict[str, str]:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    return help_options(result.stdout)


def _command(words: list[str]) -> tuple[str, ...]:
    """The command the words after `batchrun` name: `run`, or a group's `cache prune`."""
    group = cli.commands.get(words[0])
    if isinstance(group, click.Group) and len(words) > 1 and words[1] in group.commands:
        return words[0], words[1]
    return (words[0],)


def test_the_readme_lists_every_command_with_flags_it_has() -> None:
    block = section(README, "Commands").split("```text\n", 1)[1].split("```", 1)[0]
    listed: list[tuple[str, ...]] = []
    for line in block.splitlines():
        if line.startswith("batchrun "):
            listed.append(_command(line.split()[1:]))
        assert listed, "the Commands block starts with a command"
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert flag in _help(*listed[-1]), f"README: batchrun {' '.join(listed[-1])} {flag}"
    expected = {(name, *sub) for name, command in cli.commands.items()
                for sub in ([[s] for s in command.commands] if isinstance(command, click.Group)
                            else [[]])}
    assert set(listed) == expected, "README's Commands and `batchrun --help` differ"
    for flag in ("--format", "--api-key-env", "--api-key-file", "--html", "--to"):
        assert flag in block


def _code(text: str) -> list[str]:
    """The shell lines and inline code spans of a page: continuation lines joined, and in shell
    lines quoted strings and comments dropped (a mail subject is not a command)."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(re.sub(r"'[^']*'|\"[^\"]*\"", "''", line).split("#", 1)[0])
    return [*lines, *re.findall(r"`([^`\n]+)`", _prose(text))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_in_the_docs_use_flags_the_cli_has(page: Path) -> None:
    helps: dict[tuple[str, ...], dict[str, str]] = {}
    for code in _code(_text(page)):
        for name, rest in COMMAND.findall(code):
            assert name in cli.commands, f"{page.name}: `batchrun {name}` is no command"
            command = _command([name, *rest.split()])
            known = helps.setdefault(command, _help(*command))
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
                assert flag in known, f"{page.name}: `batchrun {name} ... {flag}`: no such flag"


def test_simulator_flags_match_simulate_help_both_ways() -> None:
    in_help = _help("simulate")
    rows = tables(section(ROOT / "docs" / "simulator.md", "Flags"))[0][1]
    documented = {flag for row in rows
                  for flag in re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", row[0].split(" [", 1)[0])}
    assert set(in_help) - documented == set(), "simulate flags missing from docs/simulator.md"
    assert documented - set(in_help) == set(), "docs/simulator.md names flags simulate lacks"


def test_architecture_names_every_package_and_module_and_no_other() -> None:
    text = _text(ROOT / "docs" / "architecture.md")
    package = ROOT / "batchrun"
    files = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    for sub in sorted(f.removesuffix("/__init__.py") for f in files if f.endswith("/__init__.py")):
        dotted = "batchrun." + sub.replace("/", ".")
        assert f"`{dotted}`" in text or f"`{sub}/`" in text, f"architecture.md: no {dotted}"
    for module in sorted(f for f in files if not f.endswith("/__init__.py")):
        assert f"`{module}`" in text, f"docs/architecture.md has no line for batchrun/{module}"
    for named in re.findall(r"`([\w/]+\.py)`", text):
        assert named in files or (ROOT / named).exists(), f"architecture.md names {named}"
