"""docs/options.md and docs/job-file.md are generated from the settings' declarations, and say
everything a run reads: every option, every job-file key, every environment variable."""

from __future__ import annotations

import re
from pathlib import Path

from batchrun.backends.batch import POLL_ENV
from batchrun.settings.config import SETTINGS
from batchrun.settings.providers import DEFAULT_KEY_ENVS, FALLBACK_KEY_ENV, PRESETS
from batchrun.settings.reference import job_file_page, main, options_page
from batchrun.views.progress import EVERY_ENV

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ENV_NAME = re.compile(r'environ(?:\.get)?\(\s*"([A-Z][A-Z0-9_]*)"|_ENV = "([A-Z][A-Z0-9_]*)"')
UNDOCUMENTED = {"TERM"}  # read to tell a dumb terminal from a live display; no one sets it for us


def test_the_pages_are_what_the_declarations_generate() -> None:
    for name, page in (("options.md", options_page), ("job-file.md", job_file_page)):
        assert (DOCS / name).read_text(encoding="utf-8") == page(), (
            f"docs/{name} is stale: python -m batchrun.settings.reference "
            f"{name.removesuffix('.md')} > docs/{name}")


def test_every_setting_has_its_row_and_a_real_description() -> None:
    options, job_file = options_page(), job_file_page()
    for s in SETTINGS:
        assert len(s.description) > 10 and len(s.help) > 10, s.name
        assert f"| `[{s.section}]` | `{s.key}` |" in job_file, s.name
        if s.flag is not None:
            assert f"| `{s.flag.replace('/', ' / ')}` |" in options, s.name
            assert "{default}" not in s.flag_help and "{default}" not in s.description


def test_every_environment_variable_batchrun_reads_is_documented() -> None:
    environment = options_page().split("## Environment", 1)[1]
    read = {EVERY_ENV, POLL_ENV, FALLBACK_KEY_ENV, *DEFAULT_KEY_ENVS}
    read |= {p.key_env for p in PRESETS.values() if p.key_env}
    for path in (ROOT / "batchrun").rglob("*.py"):
        if "sim" not in path.relative_to(ROOT / "batchrun").parts:
            read |= {a or b for a, b in ENV_NAME.findall(path.read_text(encoding="utf-8"))}
    assert {"RAY_ADDRESS", "AWS_REGION", "BATCHRUN_STATE_DIR"} <= read
    missing = sorted(name for name in read - UNDOCUMENTED if f"`{name}`" not in environment
                     and f"${name}" not in environment)
    assert missing == []


def test_the_generator_prints_a_page_or_says_how_to_call_it(capsys) -> None:
    assert main(["options"]) == 0
    assert capsys.readouterr().out == options_page()
    assert main(["nothing"]) == 2
    assert "options|job-file" in capsys.readouterr().err
