"""One run per output: a second run refuses at once naming the holder; a dead holder's lock is taken."""

from __future__ import annotations

import os
from pathlib import Path

from batchrun.journal.database import OutputLock

from .helpers import journal_count, prompts_csv, read_output, run_cli, start_cli, wait_until


def test_second_run_on_the_same_output_exits_2_at_once_naming_the_holder(tmp_path: Path, sim) -> None:
    first_server, second_server = sim(latency=0.25), sim()
    n = 60  # 4 s for the holder: the refused runs below take a fraction of one
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"

    def args(base_url: str) -> tuple[object, ...]:
        return ("run", "--input", src, "--output", out, "--base-url", base_url,
                "--model", "sim-1", "--concurrency", 4, "--no-progress")

    first = start_cli(*args(first_server.base_url))
    wait_until(lambda: journal_count(out) >= 5, first)
    second = run_cli(*args(second_server.base_url), timeout=30)
    assert second.returncode == 2
    assert second.stdout == ""
    assert second.stderr.count("\n") == 1
    assert second.stderr == (
        f"batchrun: another batchrun run (pid {first.pid}) is writing out.parquet; "
        "wait for it to finish or stop it, then run again\n"
    )
    assert second_server.stats.requests == 0  # the refused run sent nothing
    # Not even --fresh may touch the journal of the run that holds the output.
    fresh = run_cli(*args(second_server.base_url), "--fresh", timeout=30)
    assert fresh.returncode == 2 and f"pid {first.pid}" in fresh.stderr
    assert journal_count(out) >= 5
    assert first.poll() is None  # and did not disturb the run that holds the output
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr
    assert [r["status"] for r in read_output(out)] == ["ok"] * n
    assert first_server.stats.ok == n
    assert set(first_server.stats.billed_by_prompt.values()) == {1}


def test_lock_of_a_killed_run_is_taken_over(tmp_path: Path, sim) -> None:
    server = sim(latency=0.02)
    n = 150
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--concurrency", 4, "--no-progress")
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= 10, proc)
    proc.kill()
    proc.communicate(timeout=10)
    lock = OutputLock(out)
    assert lock.path.read_text() == str(proc.pid)  # the dead run's pid is still written there
    assert lock.held_elsewhere() is None  # but the kernel dropped its flock with the process
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in read_output(out)] == ["ok"] * n


def test_a_stale_pid_of_a_live_unrelated_process_does_not_block(tmp_path: Path, sim) -> None:
    """Only the flock counts: a lock file naming a live process that holds no lock is stale."""
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 20)
    out = tmp_path / "out.parquet"
    OutputLock(out).path.write_text(str(os.getpid()))  # this test process: alive, holds nothing
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert server.stats.ok == 20


def test_lock_in_process_refuses_while_held_and_is_free_after_release(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    held = OutputLock(out)
    held.acquire()
    try:
        assert held.held_elsewhere() == os.getpid()
        other = OutputLock(out)
        try:
            other.acquire()
        except Exception as exc:  # LockedError: a UsageError, exit code 2
            assert getattr(exc, "exit_code", None) == 2
            assert f"pid {os.getpid()}" in str(exc)
        else:
            raise AssertionError("a second lock on the same output was granted")
    finally:
        held.release()
    again = OutputLock(out)
    again.acquire()
    again.release()
