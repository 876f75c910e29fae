"""A journal that cannot be written (a full disk) stops the run with one line and exit 3.

The output lives on a real, tiny tmpfs mounted for the test: SQLite meets a real ENOSPC.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import prompts_csv, run_cli, tmpfs


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs, unmounted after the test."""
    with tmpfs(tmp_path / "tiny", "size=600k") as mount:
        yield mount


def test_full_disk_stops_with_one_line_and_keeps_what_was_committed(
        tmp_path: Path, tiny_disk: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3000,
                      text="Summarize review {i}: " + "the kettle boils fast and looks fine. " * 8)
    out = tiny_disk / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", "8", "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    line = next(x for x in result.stderr.splitlines() if "cannot write the journal" in x)
    assert "free disk space" in line and "run the same command again" in line
    # Every answer the journal holds is intact and readable; the run stopped well short of 3000.
    journal = sqlite3.connect(f"file:{tiny_disk / 'out.journal.sqlite'}?mode=ro", uri=True)
    kept = journal.execute("SELECT COUNT(*) FROM all_results WHERE status = 'ok'").fetchone()[0]
    journal.close()
    assert 0 < kept < 3000
    assert server.stats.ok < 3000
