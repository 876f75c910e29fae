"""Operating errors are one line naming the path or port and the fix, with DESIGN's exit code.

A folder the run cannot write (a read-only file system, a folder without permission) and a port in
use are the user's to fix: exit 2, nothing sent, never `internal error` or a traceback.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import prompts_csv, run_cli, run_job, tmpfs


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs, unmounted after the test (the suite runs as root, as `make test` does)."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_output_on_a_read_only_file_system_is_one_line_and_exit_2(
        tmp_path: Path, read_only: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 5)
    result = run_job(src, read_only / "out.parquet", server.base_url)
    assert result.returncode == 2
    line = _one_line(result)
    assert line == (f"batchrun: cannot write beside the output {read_only}/out.journal.lock: "
                    "read-only file system; choose a folder on a writable file system")
    assert server.stats.requests == 0  # nothing was sent


def test_an_output_in_a_folder_without_permission_is_one_line_and_exit_2(
        tmp_path: Path, sim) -> None:
    # sysfs refuses new files even to root: a real EACCES on an existing folder.
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 5)
    result = run_job(src, "/sys/out.parquet", server.base_url)
    assert result.returncode == 2
    assert _one_line(result) == ("batchrun: cannot write beside the output /sys/out.journal.lock: "
                                 "permission denied; check its permissions, or choose another folder")
    assert server.stats.requests == 0


def test_simulate_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("simulate", "--port", port)
    assert result.returncode == 2
    assert _one_line(result) == (f"batchrun: simulate: cannot listen on 127.0.0.1:{port}: address "
                                 "already in use; choose another --port (0 picks a free one) or --host")


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--max-concurrency"])
def test_simulate_refuses_a_limit_below_one(flag: str) -> None:
    result = run_cli("simulate", flag, -5)
    assert result.returncode == 2
    assert f"Invalid value for '{flag}': -5 is not in the range x>=1." in result.stderr
