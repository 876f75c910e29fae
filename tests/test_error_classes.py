"""Each error class end to end: the real CLI against the simulator, per the contract of DESIGN.md.

Job-wide failures stop sending at once (about --concurrency requests), exit 3 with one line that
names the fix, keep rows pending for the next run; row failures end one row (exit 1); transient
failures are retried until the row is answered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.journal.database import journal_path
from batchrun.sim import Step, expected_answer

from .helpers import TEST_KEY, clean_env, prompts_csv, read_output, run_cli

WRONG_KEY = "sk-wrong-key-7c1e0b9d"
CONCURRENCY = 8


def run(src: Path, out: Path, base_url: str, *extra: object, key: str = TEST_KEY,
        concurrency: int = CONCURRENCY):
    return run_cli("run", "--input", src, "--output", out, "--base-url", base_url,
                   "--model", "sim-1", "--concurrency", concurrency, "--no-progress", *extra,
                   env=clean_env(BATCHRUN_API_KEY=key))


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def assert_stopped(result, fix: str) -> None:
    assert result.returncode == 3, result.stderr
    line = last_line(result.stderr)
    assert line.startswith("batchrun: stopped") and fix in line, line
    assert "Traceback" not in result.stderr


def everything_written(out: Path) -> bytes:
    """Every byte batchrun left beside the output: journal, output, sidecar."""
    return b"".join(p.read_bytes() for p in out.parent.iterdir() if p.is_file())


def test_a_wrong_key_stops_a_big_run_at_once_and_a_rerun_finishes(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY, latency=0.02)
    src = prompts_csv(tmp_path / "in.csv", 2000)
    out = tmp_path / "out.parquet"
    result = run(src, out, server.base_url, key=WRONG_KEY)
    assert_stopped(result, "API key")
    assert server.stats.requests <= CONCURRENCY + 2  # no more than the requests in flight
    assert server.stats.status_counts == {401: server.stats.requests}
    for text in (result.stdout, result.stderr):
        assert WRONG_KEY not in text and TEST_KEY not in text
    assert WRONG_KEY.encode() not in everything_written(out)
    assert journal_path(out).exists()
    # The rows the stop cut short are pending, not failed: the fixed rerun answers all of them.
    fixed = run(src, out, server.base_url, concurrency=64)
    assert fixed.returncode == 0, fixed.stderr
    rows = read_output(out)
    assert len(rows) == 2000 and {r["status"] for r in rows} == {"ok"}
    assert server.stats.ok == 2000
    assert TEST_KEY.encode() not in everything_written(out)
    assert TEST_KEY not in fixed.stdout + fixed.stderr


def test_llmost_402_stops_the_run_and_names_the_fix(tmp_path: Path, sim) -> None:
    server = sim(error_style="llmost", latency=0.02)
    server.rule("", Step.status(402))  # every request
    src = prompts_csv(tmp_path / "in.csv", 2000)
    out = tmp_path / "out.parquet"
    result = run(src, out, server.base_url)
    assert_stopped(result, "credits")
    assert "simulator" in last_line(result.stderr)  # LLMost's metadata.provider is shown
    assert server.stats.requests <= CONCURRENCY + 2


def test_insufficient_quota_stops_the_run(tmp_path: Path, sim) -> None:
    server = sim(latency=0.02)
    server.rule("", Step.status(429, code_str="insufficient_quota"))
    src = prompts_csv(tmp_path / "in.csv", 500)
    result = run(src, tmp_path / "out.parquet", server.base_url)
    assert_stopped(result, "quota")
    assert server.stats.requests <= CONCURRENCY + 2


def test_an_unknown_model_stops_the_run(tmp_path: Path, sim) -> None:
    server = sim(models=("sim-1",), latency=0.02)
    src = prompts_csv(tmp_path / "in.csv", 500)
    result = run(src, tmp_path / "out.parquet", server.base_url, "--model", "gpt-9")
    assert_stopped(result, "--model")
    assert server.stats.requests <= CONCURRENCY + 2


def test_a_request_too_large_for_the_tpm_limit_is_stopped_before_sending(
        tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 20)
    result = run(src, tmp_path / "out.parquet", server.base_url, "--tpm", 500,
                 "--max-tokens", 1000)
    assert_stopped(result, "--max-tokens")
    assert server.stats.requests == 0


def test_the_servers_request_too_large_stops_the_run(tmp_path: Path, sim) -> None:
    # No --tpm: only the provider knows its limit, and says so in a 429 "Request too large".
    server = sim(tpm=600, rate_limit_headers=False)
    src = prompts_csv(tmp_path / "in.csv", 200)
    result = run(src, tmp_path / "out.parquet", server.base_url, "--max-tokens", 1000)
    assert_stopped(result, "--max-tokens")
    assert server.stats.requests <= CONCURRENCY + 2


@pytest.mark.parametrize(("step", "expected"), [
    (Step.status(400, "This model's maximum context length is 128000 tokens.",
                 code_str="context_length_exceeded"), "HTTP 400"),
    (Step.status(403, "Input flagged by moderation."), "HTTP 403"),
    (Step.finish("content_filter"), "content filter"),
])
def test_row_fatal_failures_end_one_row_and_the_others_succeed(
        tmp_path: Path, sim, step: Step, expected: str) -> None:
    server = sim()
    server.rule("number 7.", step)
    src = prompts_csv(tmp_path / "in.csv", 40)
    out = tmp_path / "out.parquet"
    result = run(src, out, server.base_url)
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["id"] for r in bad] == ["7"]
    assert expected in bad[0]["error"] and bad[0]["attempts"] == 1  # never retried
    assert sum(r["status"] == "ok" for r in rows) == 39


def test_every_transient_failure_is_retried_until_the_row_is_answered(
        tmp_path: Path, sim) -> None:
    server = sim()
    transient = {
        "number 1.": Step.status(408), "number 2.": Step.status(409),
        "number 3.": Step.status(429, retry_after_ms=50), "number 4.": Step.status(500),
        "number 5.": Step.status(502), "number 6.": Step.status(503),
        "number 7.": Step.drop(), "number 8.": Step.garbage(), "number 9.": Step.garbage(),
        "number 10.": Step.finish("error"), "number 11.": Step.hang(),
        "number 12.": Step.body("not json at all"),
    }
    for text, step in transient.items():
        server.rule(text, step, Step.ok())  # fails once, then answers
    src = prompts_csv(tmp_path / "in.csv", 30)
    out = tmp_path / "out.parquet"
    result = run(src, out, server.base_url, "--timeout", 1)
    assert result.returncode == 0, result.stderr
    for row in read_output(out):
        content, _ = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"]) == ("ok", content)
        failed_once = f"number {row['id']}." in transient
        assert row["attempts"] == (2 if failed_once else 1), row


def test_403_on_every_row_is_a_job_wide_stop_not_two_thousand_errors(tmp_path: Path, sim) -> None:
    # One 403 is one row's problem (moderation); ten in a row with no answer is the account's.
    server = sim(latency=0.02)
    server.rule("", Step.status(403))
    src = prompts_csv(tmp_path / "in.csv", 2000)
    result = run(src, tmp_path / "out.parquet", server.base_url)
    assert_stopped(result, "access to this model")
    assert "--retry-failed" in last_line(result.stderr)
    assert server.stats.requests <= 10 + CONCURRENCY + 2
