"""Progress: plain lines when stderr is not a terminal, a rich display on a terminal, both stoppable."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.running.stats import Stats
from batchrun.sim import Step
from batchrun.views.progress import Rates, Reporter, progress_every, snapshot

from .helpers import TEST_KEY, clean_env, prompts_csv, run_cli

LINE = re.compile(
    r"^batchrun: (\d+)/(\d+) rows, (\d+) ok, (\d+) error, [\d.]+ req/s, \d+ tok/s, \$[\d.]+, "
    r"(\d+) retries, (\d+) 429s, ETA (\S+)$"
)


def _args(src: Path, out: Path, base_url: str, *extra: object) -> list[object]:
    return ["run", "--input", src, "--output", out, "--base-url", base_url, "--model", "sim-1",
            *extra]


def test_plain_lines_appear_while_running_and_stop_at_the_end(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 60)
    out = tmp_path / "out.parquet"
    # 60 rows at 2400 rpm take about 1.5 s: several lines at one every 0.1 s.
    result = run_cli(*_args(src, out, server.base_url, "--rpm", 2400, "--log-level", "info"),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.1"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [LINE.match(line) for line in lines if LINE.match(line)]
    assert len(progress) >= 5, result.stderr
    done = [int(m.group(1)) for m in progress]
    assert done == sorted(done) and done[0] < 60
    assert {int(m.group(2)) for m in progress} == {60}
    # The last line is the final state, then the finish event; nothing follows it.
    assert progress[-1].group(0).startswith("batchrun: 60/60 rows, 60 ok, 0 error")
    assert progress[-1].group(7) == "0.0s"
    last_progress = max(i for i, line in enumerate(lines) if LINE.match(line))
    assert lines[last_progress + 1].startswith("batchrun: info: finish rows_total=60 rows_ok=60")
    assert len(lines) == last_progress + 2
    # The summary is on stdout: counts, and where the output and sidecar are.
    assert result.stdout.startswith("batchrun: 60 rows: 60 ok, 0 error")
    assert f"output    {out}" in result.stdout
    assert f"usage     {tmp_path / 'out.usage.parquet'}" in result.stdout


def test_no_progress_turns_the_lines_off(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 12)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url, "--rpm", 1200,
                            "--no-progress"),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.05"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "12 ok" in result.stdout


def test_a_short_run_prints_no_progress_line(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 5)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_bad_progress_interval_is_one_line_and_exit_2(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="soon"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "batchrun: BATCHRUN_PROGRESS_EVERY='soon' must be a number of seconds greater than 0"]
    assert server.stats.requests == 0


def _run_on_terminal(args: list[object], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, terminal text, stdout)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchrun", *map(str, args)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), stdout.decode()


def test_live_display_on_a_terminal_shows_progress_and_ends_cleanly(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 20)
    env = clean_env(TERM="xterm-256color", COLUMNS="140")
    code, screen, stdout = _run_on_terminal(
        _args(src, tmp_path / "out.parquet", server.base_url, "--rpm", 2400), env)
    assert code == 0, screen
    assert "━" in screen  # the bar
    assert "20/20 rows" in screen and "100%" in screen
    for part in ("req/s", "tok/s", "$", "retries", "429", "errors", "ETA"):
        assert part in screen
    # rich hides the cursor while live and shows it again when it stops.
    assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l") >= 0
    assert "batchrun: 20 rows: 20 ok, 0 error" in stdout


def test_live_display_stops_before_a_job_wide_stop_is_reported(tmp_path: Path, sim) -> None:
    server = sim(api_key="right-key", latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 20)
    env = clean_env(TERM="xterm-256color", BATCHRUN_API_KEY=TEST_KEY)
    code, screen, stdout = _run_on_terminal(
        _args(src, tmp_path / "out.parquet", server.base_url), env)
    assert code == 3, screen
    assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l") >= 0
    # The partial summary is on stdout, as a finished run's is; the error line comes on the
    # terminal after the display has stopped.
    assert stdout.startswith("batchrun: 20 rows: 0 ok, 0 error")
    assert "batchrun: 20 rows" not in screen
    assert screen.rfind("\x1b[?25h") < screen.rfind("batchrun: stopped:")
    assert screen.rstrip().splitlines()[-1].removeprefix("\x1b[?25h").startswith(
        "batchrun: stopped: HTTP 401 Unauthorized (invalid_api_key): Incorrect API key provided.; "
        "check the API key (it came from BATCHRUN_API_KEY)")
    assert TEST_KEY not in screen + stdout


def test_snapshot_counts_and_eta() -> None:
    stats = Stats(total_rows=100, to_send=80, finished=40, ok=38, errors=2, reused=20, sent=45,
                  retries=5, rate_limited=3, prompt_tokens=400, completion_tokens=600,
                  cost_usd=0.5, producing_done=True)
    rates = Rates(window=10.0)
    stats.finished, stats.sent = 20, 25
    rates.measure(stats, now=100.0)
    stats.finished, stats.sent = 40, 45
    snap = snapshot(stats, rates, now=102.0)
    assert snap.rows_done == 60  # 20 reused + 40 answered now
    assert snap.requests_per_s == 10.0  # 20 requests in 2 s
    assert snap.eta_s == 4.0  # 40 left at 10 rows/s
    line = snap.line()
    assert line.startswith("batchrun: 60/100 rows, 38 ok, 2 error, 10.0 req/s")
    assert line.endswith("$0.5000, 5 retries, 3 429s, ETA 4.0s")
    assert snap.as_event()["eta_s"] == 4.0


def test_progress_interval_from_the_environment() -> None:
    assert progress_every({}) == 5.0
    assert progress_every({"BATCHRUN_PROGRESS_EVERY": "0.25"}) == 0.25
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(UsageError, match="BATCHRUN_PROGRESS_EVERY"):
            progress_every({"BATCHRUN_PROGRESS_EVERY": bad})
    assert Reporter("off").mode == "off"


def test_rate_limited_rows_are_counted_in_the_lines(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    server.rule("number 7.", *[Step.status(429, "slow down", retry_after=0.1)] * 3, Step.ok())
    src = prompts_csv(tmp_path / "in.csv", 12)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.1"))
    assert result.returncode == 0, result.stderr
    last = [LINE.match(line) for line in result.stderr.splitlines() if LINE.match(line)][-1]
    assert last.group(0).startswith("batchrun: 12/12 rows, 12 ok, 0 error")
    assert (last.group(5), last.group(6)) == ("3", "3")
    assert "3 retries, 3 rate-limited (429)" in result.stdout
