"""The tests' shared library: run the real CLI, make inputs, read outputs and journals."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from batchrun.data.locations import state_dir
from batchrun.journal.database import journal_path

KEY_VARS = ("BATCHRUN_API_KEY", "OPENAI_API_KEY", "MEGALLM_API_KEY", "LLMOST_API_KEY",
            "OPENROUTER_API_KEY", "VLLM_API_KEY")
TEST_KEY = "sk-test-DO-NOT-LEAK-4f9a2c"
BUCKET = "batchrun-test"  # the bucket of the `s3` fixture (tests/conftest.py)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this one minus every API key, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.update(extra)
    return env


def run_cli(*args: Any, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `batchrun ARGS` in a subprocess and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *map(str, args)],
        env=env if env is not None else clean_env(), cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )


def run_job(src: Path | str, out: Path | str, base_url: str, *extra: Any,
            model: str | None = "sim-1", env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 180,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """`batchrun run` of `src` into `out` against a server, without progress display; never a
    traceback, and with `check` exit 0."""
    model_args = ("--model", model) if model else ()
    result = run_cli("run", "--input", src, "--output", out, "--base-url", base_url, *model_args,
                     "--no-progress", *extra, env=env, cwd=cwd, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start_cli(*args: Any, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start `batchrun ARGS` in a subprocess (to be signalled or killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *map(str, args)],
        env=env if env is not None else clean_env(), cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> Path:
    """Write rows to a CSV file (header from the first row unless given)."""
    names = fieldnames or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def prompts_csv(path: Path, n: int, text: str = "Summarize review number {i}.") -> Path:
    """A CSV of `n` distinct prompts with an `id` column."""
    return write_csv(path, [{"id": i, "prompt": text.format(i=i)} for i in range(n)])


def read_output(path: Path) -> list[dict[str, Any]]:
    """The output Parquet as a list of row dicts."""
    return pq.read_table(path).to_pylist()


def journal_file(output: Path) -> Path:
    """The journal of an output (batchrun's own rule)."""
    return journal_path(output)


def journal_count(output: Path, where: str = "status = 'ok'") -> int:
    """Results in an output's journal matching `where`, read read-only (0 if there is none yet)."""
    import sqlite3

    path = journal_file(output)
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute(f"SELECT COUNT(*) FROM all_results WHERE {where}").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:  # created but its tables are not committed yet
        return 0


def wait_until(predicate: Callable[[], Any], proc: subprocess.Popen[str] | None = None,
               timeout: float = 20.0, interval: float = 0.002) -> Any:
    """Poll until `predicate()` is truthy (returned); fail if `proc` exits first or on timeout."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited {proc.returncode} first; stderr: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def parse_plan(stdout: str) -> dict[str, Any]:
    """`batchrun plan` output as data: its `name  value` lines, and the sample request's
    url, headers and JSON body."""
    import json

    lines = stdout.splitlines()
    facts: dict[str, Any] = {}
    sample_at = next((i for i, line in enumerate(lines) if line.startswith("sample request")),
                     len(lines))
    for line in lines[1:sample_at]:
        if line.strip():
            name, _, value = line.strip().partition(" ")
            facts[name] = value.strip()
    if sample_at < len(lines):
        rest = lines[sample_at + 1:]
        facts["url"] = rest[0].strip().removeprefix("POST ")
        brace = next(i for i, line in enumerate(rest) if line.strip() == "{")
        facts["headers"] = dict(
            line.strip().split(": ", 1) for line in rest[1:brace]
            if ": " in line and not line.strip().startswith("(")
        )
        facts["body"] = json.loads("\n".join(rest[brace:]))
    return facts


def cli_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   *args: Any, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real console entry point in this process (fast: no interpreter start-up);
    returns (exit code, stdout, stderr). For quick commands that send nothing, like `plan`."""
    from batchrun.cli import main

    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["batchrun", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def refused(result: Any, *needles: str) -> str:
    """The one stderr line of a run refused with exit 2 (no traceback), checked to name `needles`."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@dataclass
class S3:
    """A bucket on a local S3-compatible server, and the environment that points at it."""

    fs: pafs.S3FileSystem
    env: dict[str, str]
    state: Path

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def put(self, key: str, local: Path) -> str:
        pafs.copy_files(str(local), f"{BUCKET}/{key}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        return self.url(key)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{BUCKET}/{key}") as f:
            return bytes(f.read())

    def table(self, key: str) -> pa.Table:
        """A Parquet object of the bucket, read whole."""
        return pq.read_table(pa.BufferReader(self.get(key)))

    def state_files(self, url: str) -> list[str]:
        """The files an s3:// output keeps in its local state folder (the WAL's aside), which
        must be under this server's state home."""
        home = state_dir(url)
        assert home.parent == self.state, (home, self.state)
        return sorted(p.name for p in home.iterdir() if not p.name.endswith(("-wal", "-shm")))

    def keys(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
        return sorted(i.path.removeprefix(f"{BUCKET}/") for i in infos if i.type == pafs.FileType.File)
