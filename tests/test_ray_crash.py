"""Crashes on the Ray engine: a killed sender actor, and `kill -9` of the driver then a rerun.

Each pays twice at most for what was in flight (the concurrency), and ends with every row
answered once in the output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import clean_env, journal_count, prompts_csv, read_output, run_cli, wait_until
from .ray_cluster import run_workers

pytestmark = pytest.mark.ray

ROWS = 200
CONCURRENCY = 8  # across both workers: at most this many requests are in flight


def command(src: Path, out: Path, base_url: str, address: str) -> list[str]:
    return [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
            "--base-url", base_url, "--model", "sim-1", "--no-progress", "--engine", "ray",
            "--workers", "2", "--ray-address", address, "--rpm", "1500",
            "--concurrency", str(CONCURRENCY)]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_complete(out: Path, server) -> None:
    rows = read_output(out)
    assert len(rows) == ROWS and all(r["status"] == "ok" for r in rows)
    paid_twice = server.stats.requests - ROWS
    assert 0 <= paid_twice <= CONCURRENCY, paid_twice
    assert max(server.stats.billed_by_prompt.values()) <= 2


def test_a_killed_worker_actor_has_only_its_unfinished_rows_redone(
        tmp_path: Path, sim, ray_address) -> None:
    server = sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", ROWS)
    out = tmp_path / "out.parquet"
    proc = start(command(src, out, server.base_url, ray_address))
    try:
        workers = wait_until(lambda: len(run_workers(proc.pid)) == 2 and run_workers(proc.pid),
                             proc, timeout=120, interval=0.2)
        wait_until(lambda: journal_count(out) >= 60, proc, timeout=60, interval=0.05)
        pid, _ = next(iter(workers.values()))
        os.kill(pid, signal.SIGKILL)  # a worker on this machine: either node's, both are here
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert_complete(out, server)


def test_kill_9_of_the_driver_then_the_same_command_resumes(
        tmp_path: Path, sim, ray_address) -> None:
    server = sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", ROWS)
    out = tmp_path / "out.parquet"
    args = command(src, out, server.base_url, ray_address)
    proc = start(args)
    try:
        wait_until(lambda: journal_count(out) >= 60, proc, timeout=180, interval=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not out.exists()
    rerun = run_cli(*args[3:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert_complete(out, server)
