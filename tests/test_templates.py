"""Templates fill plain {column} placeholders only: nothing in one can reach a Python object."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.protocol.render import compile_template
from batchrun.sim import expected_answer

from .helpers import clean_env, read_output, run_cli, write_csv

REFUSED = [
    ("{prompt.__class__}", "attributes"),
    ("{prompt.upper}", "attributes"),
    ("{prompt[0]}", "indexes"),
    ("{0}", "positional"),
    ("{}", "positional"),
    ("{prompt:>10}", "not allowed"),
    ("{prompt:{id}}", "not allowed"),
    ("{prompt!r}", "not allowed"),
    ("{prompt!s}", "not allowed"),
    ("{!r}", "not allowed"),
    ("Say {", "Single '{'"),
    ("Say } now", "Single '}'"),
    ("{missing}", "does not have"),
]


def _run(tmp_path: Path, base_url: str, template: str, rows: list[dict[str, str]] | None = None):
    src = write_csv(tmp_path / "in.csv", rows or [{"id": "1", "prompt": "hello"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", base_url,
                     "--model", "sim-1", "--no-progress", "--template", template, timeout=60)
    return result, out


def test_refused_templates_exit_2_before_anything_is_sent(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "prompt": "hello"}])
    # Every refusal through the real CLI.
    for i, (template, reason) in enumerate(REFUSED):
        out = tmp_path / f"out{i}.parquet"
        result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                         "--model", "sim-1", "--no-progress", "--template", template)
        assert result.returncode == 2, (template, result.stderr)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line, line
        assert "--template" in line and reason in line, (template, line)
        assert not out.exists()
    assert server.stats.requests == 0


def test_literal_braces_and_braces_inside_values_are_sent_verbatim(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [{"id": "1", "prompt": "{id} {0} {prompt.__class__} {{x}} %s"}]
    result, out = _run(tmp_path, server.base_url, 'JSON like {{"k": "{prompt}"}} id={id} }}{{', rows)
    assert result.returncode == 0, result.stderr
    text = 'JSON like {"k": "{id} {0} {prompt.__class__} {{x}} %s"} id=1 }{'
    [row] = read_output(out)
    assert row["response"] == expected_answer([{"role": "user", "content": text}])[0]


def test_in_process_refusals_match_the_cli() -> None:
    for template, reason in REFUSED:
        with pytest.raises(UsageError, match="--template") as info:
            compile_template(template, ["prompt", "id"])
        assert reason in info.value.message, (template, info.value.message)


def test_a_template_splits_into_literals_and_named_columns_only() -> None:
    pieces = compile_template("a{prompt}b{{c}}{id}", ["prompt", "id"])
    assert "".join(literal for literal, _ in pieces) == "ab{c}"
    assert [name for _, name in pieces if name] == ["prompt", "id"]


def test_a_column_named_like_a_number_is_still_a_plain_placeholder(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"0": "zero", "prompt": "p"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", "--template", "value {0}", timeout=60)
    assert result.returncode == 0, result.stderr
    [row] = read_output(out)
    assert row["response"] == expected_answer([{"role": "user", "content": "value zero"}])[0]


def test_non_utf8_bytes_on_the_command_line_are_refused_not_crashed(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"prompt": "hello"}])
    base = [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output",
            str(tmp_path / "out.parquet"), "--base-url", server.base_url, "--model", "sim-1"]
    for option, value in ((b"--template", b"caf\xe9 {prompt}"), (b"--system", b"\xff\xfe"),
                          (b"--stop", b"\xc3")):
        result = subprocess.run([*map(os.fsencode, base), option, value], capture_output=True,
                                env=clean_env(LANG="C.UTF-8"), timeout=60)
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2, stderr
        assert option.decode() in stderr and "UTF-8" in stderr and "Traceback" not in stderr
    assert server.stats.requests == 0
