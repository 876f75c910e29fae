"""The tests' shared library: run the real CLI, make inputs, read outputs and journals."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, TextIO

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
    """The environment of a CLI call (in-process or not): this one minus every API key, plus
    `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.update(extra)
    return env


def run_cli(*args: Any, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 180, subprocess: bool = False) -> CompletedProcess[str]:
    """Run `batchrun ARGS` and wait for it: in this process (`call_cli`), or with `subprocess`
    in a process of its own, which Ray runs always get (their driver joins the session's Ray)."""
    argv = [str(arg) for arg in args]
    if subprocess or _on_ray(argv):
        return _run_process(argv, env, cwd, timeout)
    # In this process the bound is pytest-timeout's (pyproject.toml addopts) instead of `timeout`.
    code, out, err = call_cli(argv, env=env, cwd=cwd)
    return CompletedProcess([sys.executable, "-m", "batchrun", *argv], code, out, err)


def _run_process(argv: list[str], env: dict[str, str] | None, cwd: Path | None,
                 timeout: float) -> CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *argv],
        env=env if env is not None else clean_env(), cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )


def _on_ray(argv: list[str]) -> bool:
    """`--engine ray`: the run's Ray driver must be a process of its own, not pytest's (which
    holds the session's Ray, `ray_address`)."""
    return "--engine=ray" in argv or any(
        a == "--engine" and b == "ray" for a, b in zip(argv, argv[1:], strict=False))


def call_cli(args: list[str], env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[int, str, str]:
    """Run the real command line in this process as if it were a process of its own (no
    interpreter start-up: pandas and pyarrow are imported once per session); returns (exit code,
    stdout, stderr).

    The environment is `env` (default: this one minus every API key) and the working folder `cwd`
    for the call only; stdout and stderr are captured as a pipe would (bytes, decoded as text
    mode does), and batchrun's logging is set back as it was, since the CLI configures it.
    """
    from batchrun.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    call_env = env if env is not None else clean_env()
    logger = logging.getLogger("batchrun")
    saved_log = (list(logger.handlers), logger.level, logger.propagate)
    out, err = _pipe(), _pipe()
    os.environ.clear()
    os.environ.update(call_env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _process_warnings():
            code = main(args)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logger.handlers[:] = saved_log[0]
        logger.setLevel(saved_log[1])
        logger.propagate = saved_log[2]
    return code, _read(out), _read(err)


@contextlib.contextmanager
def _process_warnings() -> Iterator[None]:
    """Warnings as `python -m batchrun` meets them (CPython's default filters, printed to stderr),
    not as pytest's `error` filter would turn them into an "internal error" exit 1."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.filterwarnings("ignore", category=category, append=True)
        warnings.showwarning = _print_warning
        yield


def _print_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: TextIO | None = None, line: str | None = None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _pipe() -> io.TextIOWrapper:
    """A stream like a CLI's stdout into a pipe: UTF-8 text over bytes, not a terminal."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _read(stream: io.TextIOWrapper) -> str:
    """What was written, read back as `subprocess.run(text=True)` reads a pipe."""
    sink = stream.detach()
    assert isinstance(sink, io.BytesIO)
    return io.TextIOWrapper(io.BytesIO(sink.getvalue()), encoding="utf-8").read()


def run_job(src: Path | str, out: Path | str, base_url: str, *extra: Any,
            model: str | None = "sim-1", env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 180, check: bool = False,
            subprocess: bool = False) -> CompletedProcess[str]:
    """`batchrun run` of `src` into `out` against a server, without progress display (as
    `run_cli`); never a traceback, and with `check` exit 0."""
    model_args = ("--model", model) if model else ()
    result = run_cli("run", "--input", src, "--output", out, "--base-url", base_url, *model_args,
                     "--no-progress", *extra, env=env, cwd=cwd, timeout=timeout,
                     subprocess=subprocess)
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
    """`call_cli(ARGS)` with `env` added to this environment (the older spelling; the fixtures
    are no longer needed)."""
    return call_cli([str(arg) for arg in args], env=clean_env(**(env or {})))


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


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `mount` (`options`: "size=600k", "ro,size=64k"), unmounted after;
    the test is skipped where mounting needs a root this process is not."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
