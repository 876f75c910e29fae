"""SIGINT / SIGTERM: stop sending, let requests in flight finish, commit, exit 130; a rerun resumes.

A second SIGINT during the grace period stops at once, and the journal is still consistent.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from batchrun.sim import Step, expected_answer

from .helpers import journal_count, prompts_csv, read_output, run_cli, start_cli, wait_until, write_csv


def _check_complete(out: Path, n: int) -> None:
    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(n)]
    for row in rows:
        content, _ = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"]) == ("ok", content)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_commits_what_finished_exits_130_and_the_rerun_sends_only_the_rest(
        tmp_path: Path, sim, sig: signal.Signals) -> None:
    server = sim(latency=0.03)
    n = 200
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--concurrency", 8, "--no-progress")
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= 40, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == (f"batchrun: interrupted by {sig.name}; finished rows are saved: run the "
                         "same command again to resume")
    assert "Traceback" not in stderr
    assert not out.exists()
    # The grace period let every request in flight finish, and each answer was committed.
    committed = journal_count(out)
    assert 40 <= committed < n
    assert server.stats.ok == committed == server.stats.requests
    assert journal_count(out, "status != 'ok'") == 0

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == n  # the rerun sent only the rows left
    assert re.search(rf"\({committed} [^)]*earlier runs", result.stdout), result.stdout
    _check_complete(out, n)
    assert set(server.stats.billed_by_prompt.values()) == {1}


def test_second_sigint_stops_at_once_and_the_journal_stays_consistent(tmp_path: Path, sim) -> None:
    server = sim(latency=0.0)
    fast, slow = 30, 30
    rows = [{"id": i, "prompt": f"Summarize review number {i}."} for i in range(fast)]
    rows += [{"id": fast + i, "prompt": f"Slow review number {i}."} for i in range(slow)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    concurrency = 4
    # The first slow requests take a minute: far longer than the 10 s grace period.
    server.rule("Slow review", Step.delay(60), times=concurrency)
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--concurrency", concurrency, "--no-progress")
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= fast and server.stats.in_flight == concurrency, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None  # waiting in the grace period for the requests in flight
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=5)  # well inside the grace period: it did not wait
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert journal_count(out) == fast
    assert journal_count(out, "status != 'ok'") == 0  # cut-short rows stay pending, not failed
    wait_until(lambda: server.stats.in_flight == 0, timeout=5)  # its connections were closed
    assert server.stats.ok == fast  # nothing in flight was billed

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    _check_complete(out, fast + slow)
    assert server.stats.ok == fast + slow
    assert set(server.stats.billed_by_prompt.values()) == {1}


def test_sigint_while_the_producer_skips_answered_rows_exits_without_waiting_the_grace(
        tmp_path: Path, sim) -> None:
    """Workers idle on an empty queue while the producer skips a long answered stretch must be
    released when a signal stops the producer (not left to the 10 s grace timer)."""
    server = sim()
    n = 60_000
    # One identical deterministic prompt: the first run sends 1 request and maps every row.
    src = write_csv(tmp_path / "in.csv", [{"id": i, "prompt": "Same question."} for i in range(n)])
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--temperature", "0", "--no-progress")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert server.stats.requests == 1

    def mapped() -> int:
        import sqlite3

        from .helpers import journal_file

        try:
            db = sqlite3.connect(f"file:{journal_file(out)}?mode=ro", uri=True, timeout=5)
            try:
                return int(db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
            finally:
                db.close()
        except sqlite3.OperationalError:
            return 0

    proc = start_cli(*args)
    # The rerun maps its rows afresh: wait until it is part-way through skipping them.
    wait_until(lambda: 0 < mapped() < n // 2, proc, interval=0.001)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=6)  # the grace period is 10 s: it must not wait for it
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert server.stats.requests == 1
