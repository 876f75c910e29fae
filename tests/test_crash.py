"""kill -9 at any moment loses at most the requests in flight; a rerun completes without paying twice.

Every run here is the real CLI against the simulator on loopback, in a process of its own where
it is killed. The simulator bills an answer when it sends it, so `billed_by_prompt` says exactly
which prompts were paid twice.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from batchrun.sim import expected_answer

from .helpers import (
    journal_count,
    prompts_csv,
    read_output,
    run_cli,
    start_cli,
    wait_until,
    write_csv,
)

CONCURRENCY = 16


def _args(src: Path, out: Path, base_url: str) -> tuple[Any, ...]:
    return ("run", "--input", src, "--output", out, "--base-url", base_url, "--model", "sim-1",
            "--concurrency", CONCURRENCY, "--no-progress")


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _tmp_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp")) + sorted(
        out.parent.glob(f".{out.stem}.usage.parquet.*.tmp"))


def _check_complete(out: Path, n: int) -> None:
    """Every row ok, in input order, each answer the one its own prompt gets."""
    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(n)]
    for row in rows:
        content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"], row["finish_reason"]) == ("ok", content, finish), row
    assert not _tmp_files(out)


@pytest.mark.slow
def test_sigkill_early_and_middle_then_rerun_pays_at_most_the_requests_in_flight(
        tmp_path: Path, sim) -> None:
    server = sim(latency=0.035, latency_jitter=0.015)
    n = 600
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = _args(src, out, server.base_url)
    # Lost to a kill: answers the simulator billed that the journal does not hold. Each kill may
    # add at most one per worker (the requests in flight); a re-sent row adds one on each side.
    lost_before = committed_before = 0
    # Kill points by what the simulator has billed, which is not in step with the journal's commits.
    for more in (40, 150, 150):
        proc = start_cli(*args)
        base = server.stats.ok
        wait_until(lambda base=base, more=more: server.stats.ok >= base + more, proc)
        _kill(proc)
        # The dead client's requests still at the simulator end now: billed, or cancelled unbilled.
        wait_until(lambda: server.stats.in_flight == 0, timeout=10)
        committed = journal_count(out)
        assert committed >= committed_before + more - CONCURRENCY  # this run's rows were kept
        lost = server.stats.ok - committed
        assert lost - lost_before <= CONCURRENCY, (lost, lost_before)
        lost_before, committed_before = lost, committed
        assert not out.exists()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    _check_complete(out, n)
    billed = server.stats.billed_by_prompt
    assert len(billed) == n
    paid_twice = sum(times - 1 for times in billed.values())
    assert paid_twice == lost_before <= 3 * CONCURRENCY
    assert max(billed.values()) <= 2


@pytest.mark.slow
def test_sigkill_during_the_final_write_keeps_the_old_output_and_sends_nothing_again(
        tmp_path: Path, sim) -> None:
    server = sim(latency=0.0)
    n = 400
    # A wide column makes the output ~16 MB, so the write takes long enough to be caught.
    rows = [{"id": i, "prompt": f"Summarize review number {i}.",
             "payload": base64.b64encode(os.urandom(30_000)).decode()} for i in range(n)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    args = _args(src, out, server.base_url)

    def kill_while_writing() -> None:
        proc = start_cli(*args)
        wait_until(lambda: [p for p in _tmp_files(out) if p.name.startswith(f".{out.name}")],
                   proc, interval=0.0005)
        _kill(proc)
        assert _tmp_files(out)  # it died mid-write, leaving its temporary file behind

    # 1. Killed while writing the first output: every answer was committed before the write.
    kill_while_writing()
    assert not out.exists()
    assert journal_count(out) == n
    assert server.stats.ok == n
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == n  # the rerun sent nothing
    _check_complete(out, n)
    before = out.read_bytes()

    # 2. Killed while rewriting it: the complete output from before is untouched (atomic replace).
    kill_while_writing()
    assert out.read_bytes() == before
    assert len(read_output(out)) == n
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    _check_complete(out, n)  # includes: no temporary file left over
    assert server.stats.requests == n
    assert max(server.stats.billed_by_prompt.values()) == 1


def test_every_finished_row_is_committed_within_a_fraction_of_a_second(tmp_path: Path, sim) -> None:
    """Read the journal read-only while a run is going: answers show up as they arrive."""
    import sqlite3
    import time

    from .helpers import journal_file

    concurrency = 4
    server = sim(latency=0.02)
    n = 200
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    proc = start_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", concurrency, "--no-progress")
    wait_until(lambda: journal_count(out) > 0, proc)
    db = sqlite3.connect(f"file:{journal_file(out)}?mode=ro", uri=True, timeout=5)
    first_seen: dict[bytes, float] = {}
    finished_at: dict[bytes, float] = {}
    most_uncommitted = 0
    while proc.poll() is None and len(first_seen) < n:
        billed = server.stats.ok  # read before the journal: it can only have grown since
        now = time.time()
        for key, at in db.execute("SELECT key, finished_at FROM all_results"):
            first_seen.setdefault(key, now)
            finished_at[key] = at
        most_uncommitted = max(most_uncommitted, billed - len(first_seen))
        time.sleep(0.005)
    db.close()
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert len(first_seen) == n
    # Paid but not yet durable: never more than one answer per worker (the requests in flight).
    assert most_uncommitted <= concurrency
    # Committed within a fraction of a second of the answer (polling adds up to ~5 ms).
    lags = sorted(first_seen[key] - finished_at[key] for key in first_seen)
    assert lags[-1] < 0.5, lags[-10:]


def test_group_commit_wakes_each_worker_after_its_commit_and_a_failure_reaches_all(
        tmp_path: Path) -> None:
    """The engine's commit path in-process: one transaction serves many workers; a failed commit
    (here: a value SQLite cannot store) fails every waiting and later worker instead of hanging."""
    import asyncio
    import sqlite3

    from batchrun.journal.database import GroupCommit, Journal
    from batchrun.protocol.outcome import OK, Outcome

    journal = Journal(tmp_path / "j.sqlite")
    commits: list[int] = []

    async def main() -> None:
        group = GroupCommit(journal, every=10.0, on_commit=commits.append)
        flusher = asyncio.create_task(group.run())

        async def worker(i: int) -> int:
            await group.commit(Outcome(i.to_bytes(4, "big"), OK, response=f"answer {i}"))
            # Committed before commit() returns: another connection sees it now.
            other = sqlite3.connect(tmp_path / "j.sqlite")
            seen = other.execute("SELECT response FROM all_results WHERE key = ?",
                                 (i.to_bytes(4, "big"),)).fetchone()
            other.close()
            assert seen == (f"answer {i}",)
            return i

        assert await asyncio.gather(*(worker(i) for i in range(50))) == list(range(50))
        assert sum(commits) == 50 and len(commits) < 50  # shared transactions

        bad = Outcome(b"bad", OK, response=object())  # type: ignore[arg-type]
        results = await asyncio.gather(group.commit(bad), return_exceptions=True)
        assert isinstance(results[0], sqlite3.Error)
        with contextlib.suppress(sqlite3.Error):
            await flusher
        assert flusher.done()
        later = await asyncio.wait_for(
            asyncio.gather(group.commit(Outcome(b"late", OK)), return_exceptions=True), 1.0)
        assert isinstance(later[0], sqlite3.Error)  # raised at once, not left waiting

    asyncio.run(main())
    count = sqlite3.connect(tmp_path / "j.sqlite").execute("SELECT COUNT(*) FROM all_results")
    assert count.fetchone()[0] == 50  # the failed transaction was rolled back
