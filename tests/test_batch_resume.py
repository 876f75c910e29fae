"""Cron, crashes and switching backends: batches are re-attached, never submitted twice, and one
journal keeps the online and the batch path from paying for a row twice. The real CLI, in a process
of its own where it is killed."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from .batch_support import (
    batch_args,
    batch_statuses,
    check_billed_once,
    check_complete,
    env,
    submitted,
)
from .helpers import journal_file, prompts_csv, refused, run_cli, start_cli, wait_until


def _prompts(n: int) -> list[str]:
    return [f"Summarize review number {i}." for i in range(n)]


@pytest.mark.slow
def test_cron_no_wait_exits_75_until_the_batch_ends_then_0_with_the_whole_output(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=6.0)
    n = 50
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = batch_args(src, out, server.base_url, "--no-wait")
    started = time.monotonic()
    first = run_cli(*args, env=env())
    assert first.returncode == 75, first.stderr
    assert time.monotonic() - started < 6.0  # back before the batch could have ended
    assert "run the same command later" in first.stderr and not out.exists()
    assert server.stats.batches_created == 1
    second = run_cli(*args, env=env())
    assert second.returncode == 75, second.stderr
    assert server.stats.batches_created == 1 and server.stats.files_uploaded == 1
    status = run_cli("status", out, env=env())
    assert "waiting" in status.stdout and "1 live" in status.stdout and "batch_" in status.stdout
    wait_until(lambda: batch_statuses(server) == ["completed"], timeout=30, interval=0.05)
    third = run_cli(*args, env=env())
    assert third.returncode == 0, third.stderr
    check_billed_once(server, [r["prompt"] for r in check_complete(out, n)])
    assert server.stats.batches_created == 1


def test_kill_9_right_after_the_batch_is_created_then_the_rerun_re_attaches(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=1.0)
    n = 60
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = batch_args(src, out, server.base_url)
    proc = start_cli(*args, env=env())
    wait_until(lambda: server.stats.batches_created >= 1, proc, interval=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    rerun = run_cli(*args, env=env())
    assert rerun.returncode == 0, rerun.stderr
    assert server.stats.batches_created == 1
    check_billed_once(server, [r["prompt"] for r in check_complete(out, n)])


def test_a_batch_the_journal_never_heard_of_is_found_by_its_metadata(
        tmp_path: Path, sim) -> None:
    """The crash between creating a batch and recording its id, made exact: the journal is left
    as that kill leaves it (keys held, file uploaded, no batch id)."""
    server = sim(batch_duration_s=0.5)
    n = 20
    src, out, args = submitted(tmp_path, server, n)
    db = sqlite3.connect(journal_file(out))
    with db:
        db.execute("UPDATE batches SET batch_id = NULL, status = 'submitting'")
    db.close()
    rerun = run_cli(*batch_args(src, out, server.base_url), env=env())
    assert rerun.returncode == 0, rerun.stderr
    assert server.stats.batches_created == 1 and server.stats.files_uploaded == 1
    check_billed_once(server, [r["prompt"] for r in check_complete(out, n)])


def test_a_run_stopped_online_by_its_budget_is_finished_as_a_batch_paying_nothing_twice(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0.2)
    n = 40
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    online = ("run", "--input", src, "--output", out, "--base-url", server.base_url, "--model",
              "sim-1", "--max-tokens", 100, "--no-progress", "--concurrency", 2)
    stopped = run_cli(*online, "--max-cost", "0.002", env=env())
    assert stopped.returncode == 3, stopped.stderr
    answered_online = server.stats.ok - server.stats.batch_lines_billed
    assert 0 < answered_online < n
    finished = run_cli(*batch_args(src, out, server.base_url, "--max-tokens", 100), env=env())
    assert finished.returncode == 0, finished.stderr
    assert server.stats.batch_lines_billed == n - answered_online
    rows = check_complete(out, n)
    check_billed_once(server, [r["prompt"] for r in rows])
    # The batch rows cost half of what the same usage costs online.
    online_rows = [r for r in rows if r["latency_ms"] is not None]
    batch_rows = [r for r in rows if r["latency_ms"] is None]
    assert len(online_rows) == answered_online and len(batch_rows) == n - answered_online
    for row in batch_rows:
        assert row["cost_usd"] == (row["prompt_tokens"] * 0.5 + row["completion_tokens"]) / 1e6


def test_rows_in_a_live_batch_are_not_sent_online_and_cancel_gives_them_back(
        tmp_path: Path, sim) -> None:
    server = sim(batch_lines_per_s=5)  # 12 s for the batch: cancelled well before
    n = 60
    src, out, _ = submitted(tmp_path, server, n)
    online = ("run", "--input", src, "--output", out, "--base-url", server.base_url, "--model",
              "sim-1", "--no-progress")
    blocked = run_cli(*online, env=env())
    assert blocked.returncode == 75, blocked.stderr
    assert "--backend batch" in blocked.stderr
    assert server.stats.ok == server.stats.batch_lines_billed  # no row went online
    wait_until(lambda: server.stats.batch_lines_billed > 0)  # the batch is part done: cancel now
    cancelled = run_cli("cancel", out, env=env())
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout and "rows back to pending" in cancelled.stdout
    in_batch = server.stats.batch_lines_billed
    assert 0 < in_batch < n
    status = run_cli("status", out, env=env())
    assert "0 live, 1 collected" in status.stdout and "cancelled" in status.stdout
    finished = run_cli(*online, env=env())
    assert finished.returncode == 0, finished.stderr
    assert server.stats.ok - server.stats.batch_lines_billed == n - in_batch
    check_billed_once(server, [r["prompt"] for r in check_complete(out, n)])


@pytest.mark.slow
def test_fresh_refuses_to_forget_a_live_batch_and_sends_nothing(tmp_path: Path, sim) -> None:
    # The journal is all that knows of a live batch: --fresh would delete it, and the provider
    # would bill the batch and the rows sent again alike.
    server = sim(batch_lines_per_s=5)
    n = 30
    src, out, args = submitted(tmp_path, server, n)
    refused(run_cli(*args, "--fresh", env=env()), "--fresh would forget 1 Batch API batch(es)",
            "batch_", f"batchrun cancel {out}")
    assert server.stats.batches_created == 1 and server.stats.files_uploaded == 1
    assert server.stats.requests == 0  # no row went online either
    status = run_cli("status", out, env=env())
    assert "1 live" in status.stdout  # the journal still holds it
    assert run_cli("cancel", out, env=env()).returncode == 0
    again = run_cli(*batch_args(src, out, server.base_url), "--fresh", env=env())
    assert again.returncode == 0, again.stderr
    check_complete(out, n)
