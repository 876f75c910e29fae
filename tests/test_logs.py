"""--log-format json: every stderr line is one JSON object, whatever the exit code; --log-level."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from batchrun.sim import Step
from batchrun.views.logs import JsonFormatter, TextFormatter

from .helpers import TEST_KEY, clean_env, prompts_csv, run_cli, start_cli

CORE = {"ts", "time", "level", "event", "message"}


def _events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (fails on the first line that is not)."""
    lines = stderr.splitlines()
    assert lines, "no log lines"
    events = [json.loads(line) for line in lines]
    for event in events:
        assert CORE <= set(event), event
    return events


def _args(src: Path, out: Path, base_url: str, *extra: object) -> list[object]:
    return ["run", "--input", src, "--output", out, "--base-url", base_url, "--model", "sim-1",
            "--log-format", "json", *extra]


@pytest.mark.slow
def test_json_events_of_a_run_all_parse(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    # Four 429s in a row are evidence the run is too fast: the whole run pauses (one event).
    server.script(*[Step.status(429, "slow down", retry_after=0.3)] * 4)
    src = prompts_csv(tmp_path / "in.csv", 30)
    out = tmp_path / "out.parquet"
    result = run_cli(*_args(src, out, server.base_url, "--rpm", 1800),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.1"))
    assert result.returncode == 0, result.stderr
    events = _events(result.stderr)
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "finish"
    assert names.count("progress") >= 3 and "rate_limited" in names
    start = events[0]
    assert (start["total_rows"], start["output"], start["model"]) == (30, str(out), "sim-1")
    pause = events[names.index("rate_limited")]
    assert (pause["pause_s"], pause["status"], pause["level"]) == (0.3, 429, "info")
    progress = [e for e in events if e["event"] == "progress"]
    assert [p["rows_done"] for p in progress] == sorted(p["rows_done"] for p in progress)
    assert progress[-1]["rows_done"] == progress[-1]["rows_total"] == 30
    finish = events[-1]
    assert finish["level"] == "info" and finish["exit_code"] == 0
    assert (finish["rows_total"], finish["rows_ok"], finish["rows_error"]) == (30, 30, 0)
    assert finish["requests_sent"] == 34 and finish["rate_limited"] == 4
    assert finish["total_tokens"] == server.stats.billed_prompt_tokens + \
        server.stats.billed_completion_tokens
    assert finish["output"] == str(out)
    # The summary is on stdout as in text mode.
    assert result.stdout.startswith("batchrun: 30 rows: 30 ok, 0 error")
    assert all(e["ts"] <= f["ts"] for e, f in zip(events, events[1:], strict=False))


def test_json_log_level_warning_keeps_only_warnings(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 5)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url,
                            "--log-level", "warning"),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.05"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "5 ok" in result.stdout


def test_json_job_wide_stop_exit_3(tmp_path: Path, sim) -> None:
    server = sim(api_key="the-right-key")
    src = prompts_csv(tmp_path / "in.csv", 10)
    result = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url, "--log-level", "debug"),
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 3, result.stderr
    events = _events(result.stderr)
    names = [e["event"] for e in events]
    stop = events[names.index("stop")]
    assert stop["level"] == "warning" and "401" in stop["reason"]
    finish = events[names.index("finish")]
    assert finish["exit_code"] == 3 and finish["level"] == "info"
    assert finish["stopped"] == stop["reason"]
    assert events[-1]["event"] == "error" and events[-1]["level"] == "error"
    assert events[-1]["exit_code"] == 3 and "401" in events[-1]["message"]
    assert "stopped" in result.stdout  # the partial summary goes to stdout in JSON mode
    assert TEST_KEY not in result.stderr + result.stdout


def test_json_usage_errors_exit_2(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    bad_flag = run_cli(*_args(src, tmp_path / "out.parquet", server.base_url, "--rpm", "fast"))
    missing = run_cli(*_args(tmp_path / "absent.csv", tmp_path / "out.parquet", server.base_url))
    bad_level = run_cli("run", "--log-format=json", "--log-level", "loud")
    for result in (bad_flag, missing, bad_level):
        assert result.returncode == 2, result.stderr
        [event] = _events(result.stderr)
        assert (event["event"], event["level"], event["exit_code"]) == ("error", "error", 2)
    assert "--rpm" in bad_flag.stderr and "absent.csv" in missing.stderr
    assert server.stats.requests == 0


def test_json_interrupt_exit_130(tmp_path: Path, sim) -> None:
    server = sim(latency=0.3)
    src = prompts_csv(tmp_path / "in.csv", 40)
    proc = start_cli(*_args(src, tmp_path / "out.parquet", server.base_url, "--concurrency", 4),
                     env=clean_env(BATCHRUN_PROGRESS_EVERY="0.1"))
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the run is under way
        seen.append(line)
        if json.loads(line)["event"] == "progress":
            break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=30)
    assert proc.returncode == 130, rest
    events = _events("".join(seen) + rest)
    names = [e["event"] for e in events]
    assert "stop" in names and events[names.index("finish")]["exit_code"] == 130
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 130
    assert "interrupted" in events[-1]["message"]
    assert "pending" in stdout


def test_text_log_lines_and_no_key_at_debug(tmp_path: Path, sim) -> None:
    server = sim(api_key="the-right-key")
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url",
                     server.base_url, "--model", "sim-1", "--log-level", "debug",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert all(line.startswith(("batchrun: ", "  ")) for line in lines), lines
    assert any(line.startswith("batchrun: info: start total_rows=3") for line in lines)
    assert any(line.startswith("batchrun: warning: stop reason=") for line in lines)
    assert lines[-1].startswith("batchrun: stopped:")
    assert TEST_KEY not in result.stderr + result.stdout


def _record(event: str, data: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord("batchrun", logging.INFO, __file__, 1, event, None, None)
    record.event = event
    record.data = data
    return record


def test_formatters() -> None:
    record = _record("finish", {"rows_ok": 3, "level": "spoofed", "path": Path("/x")})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "info" and entry["event"] == "finish" and entry["rows_ok"] == 3
    assert entry["path"] == "/x"
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-01T00:00:00.000Z")
    assert TextFormatter().format(record) == \
        "batchrun: info: finish rows_ok=3 level=spoofed path=/x"
