"""An endpoint that never answers is a job-wide failure: exit 3 at once, every row left pending;
an endpoint that answered and then went away is retried as before."""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from batchrun.protocol.retry import Failure, Kind, RetryPolicy
from batchrun.sending.decision import DEAD_AFTER, Finish, History, Retry, Stop, decide
from batchrun.sim import SimConfig, SimulatorThread

from .helpers import journal_count, prompts_csv, run_cli, run_job, start_cli, wait_until

REFUSED = Failure(Kind.RETRY, "connection error: cannot connect to 127.0.0.1:9 "
                  "(Connection refused)", unreachable=True)


@contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _sent(summary: str) -> int:
    found = re.search(r"requests\s+([\d,]+) sent", summary)
    assert found, summary
    return int(found.group(1).replace(",", ""))


def test_a_closed_port_stops_with_exit_3_and_the_rerun_sends_every_row(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 300)
    out = tmp_path / "out.parquet"
    with _closed_port() as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        dead = run_job(src, out, base_url, "--concurrency", "8")
    assert dead.returncode == 3, dead.stderr
    last = dead.stderr.strip().splitlines()[-1]
    assert last.startswith(f"batchrun: stopped: {base_url} never answered"), last
    assert "Connection refused" in last and "check --base-url" in last
    assert _sent(dead.stdout + dead.stderr) < 300  # stopped on the first attempts, not each row's
    status = run_cli("status", out)
    assert "300 total: 0 answered, 0 failed, 300 left" in status.stdout, status.stdout
    assert journal_count(out, "status = 'error'") == 0  # pending, not failed
    # The server comes up on that very address: the same command sends every row, no
    # --retry-failed needed.
    with SimulatorThread(SimConfig(), port=port) as server:
        live = run_job(src, out, base_url, "--concurrency", "8")
        assert live.returncode == 0, live.stderr
        assert server.stats.ok == 300
    assert journal_count(out) == 300


def test_a_server_that_never_answers_in_time_stops_the_run_too(tmp_path: Path, sim) -> None:
    server = sim(hang_rate=1.0)  # takes every connection, answers none
    src = prompts_csv(tmp_path / "in.csv", 20)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--timeout", "0.3", "--concurrency", "4")
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "never answered" in last and "timeout" in last and server.base_url in last, last
    assert journal_count(out, "status = 'error'") == 0


def test_an_endpoint_that_answered_and_then_went_away_is_retried_as_before(
        tmp_path: Path) -> None:
    with _closed_port() as port:
        pass  # a free port for the server, which comes and goes on it
    src = prompts_csv(tmp_path / "in.csv", 60)
    out = tmp_path / "out.parquet"
    with SimulatorThread(SimConfig(latency=0.02), port=port) as server:
        proc = start_cli("run", "--input", src, "--output", out, "--base-url",
                         f"http://127.0.0.1:{port}/v1", "--model", "sim-1", "--concurrency", "2",
                         "--max-attempts", "20", "--no-progress")
        wait_until(lambda: server.stats.ok >= 5, proc)
    # Gone for a second: the rows in flight and those after them retry instead of stopping.
    time.sleep(1.0)
    assert proc.poll() is None
    with SimulatorThread(SimConfig(latency=0.02), port=port) as again:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert again.stats.ok > 0
    assert journal_count(out) == 60 and "never answered" not in stdout + stderr
    retries = re.search(r"([\d,]+) retries", stdout)
    assert retries and int(retries.group(1).replace(",", "")) > 0, stdout  # the outage was seen


# --- the decision itself ------------------------------------------------------------------


def _history(unanswered: int) -> History:
    return History(sent=1, failed=1, limited=0, elapsed=0.1, refused=0, unanswered=unanswered)


def test_the_first_attempts_that_reach_no_server_stop_the_run() -> None:
    policy = RetryPolicy(max_attempts=6)
    for n in range(1, DEAD_AFTER):
        assert isinstance(decide(REFUSED, _history(n), policy, random.Random(1)), Retry)
    stop = decide(REFUSED, _history(DEAD_AFTER), policy, random.Random(1), "http://x/v1")
    assert isinstance(stop, Stop) and stop.reason.startswith("stopped: http://x/v1 never answered")


def test_with_one_attempt_per_row_the_first_unreachable_one_stops() -> None:
    stop = decide(REFUSED, _history(1), RetryPolicy(max_attempts=1), random.Random(1))
    assert isinstance(stop, Stop)


@pytest.mark.parametrize("failure", [
    Failure(Kind.RETRY, "HTTP 503 Service Unavailable", 503),  # a server answered
    Failure(Kind.RETRY, "connection error: server closed the connection"),
])
def test_failures_of_a_server_that_is_there_are_retried_and_given_up_as_before(
        failure: Failure) -> None:
    policy = RetryPolicy(max_attempts=2)
    # `unanswered` counts only attempts that reached no server; these never raise it.
    assert isinstance(decide(failure, _history(0), policy, random.Random(1)), Retry)
    spent = History(sent=2, failed=2, limited=0, elapsed=1.0, refused=0)
    assert isinstance(decide(failure, spent, policy, random.Random(1)), Finish)


def test_once_anything_answered_a_refused_connection_is_retried() -> None:
    # The sender passes unanswered=0 for good once any attempt was answered.
    assert isinstance(decide(REFUSED, _history(0), RetryPolicy(), random.Random(1)), Retry)
