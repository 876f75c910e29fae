"""The summary at the end of a run: every figure a person needs, in one screen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from batchrun.running.summary import Summary
from batchrun.sim import Step

from .helpers import clean_env, prompts_csv, run_cli, run_job, write_csv

BASE = Summary(
    rows_total=1200, rows_ok=1190, rows_error=10, prompt_tokens=120_000,
    completion_tokens=45_500, total_tokens=165_500, cost_usd=1.23456, requests_sent=1250,
    retries=40, rate_limited=12, reused=0, dedup_saved=0, seconds=125.0,
    output=Path("out/x.parquet"), usage_output=Path("out/x.usage.parquet"), model="gpt-4o-mini",
    cost_this_run=1.23456,
)


def test_render_shows_every_figure() -> None:
    lines = BASE.render().splitlines()
    assert lines == [
        "batchrun: 1,200 rows: 1,190 ok, 10 error",
        "  time      2m05s",
        "  requests  1,250 sent (10.0/s), 40 retries, 12 rate-limited (429)",
        "  tokens    120,000 prompt + 45,500 completion = 165,500",
        "  cost      $1.2346  model gpt-4o-mini",
        "  errors    10 rows failed: their reason is in the error column (status = 'error')",
        "  output    out/x.parquet",
        "  usage     out/x.usage.parquet",
    ]
    assert BASE.exit_code == 1


def test_render_resumed_deduplicated_and_unpriced() -> None:
    resumed = replace(BASE, rows_ok=1200, rows_error=0, reused=900, dedup_saved=35,
                      cost_this_run=0.25, seconds=4.0)
    text = resumed.render()
    assert text.startswith("batchrun: 1,200 rows: 1,200 ok, 0 error (900 answered by earlier runs,")
    assert "  time      4.0s" in text
    assert "  cost      $1.2346 (this run $0.2500)" in text
    assert "  dedup     35 rows repeated an identical request: 35 requests saved" in text
    assert "errors" not in text and resumed.exit_code == 0
    unpriced = replace(BASE, cost_usd=None, cost_this_run=None).render()
    assert "  cost      unknown (no price for this model: set [pricing] in the job file)" in unpriced


def test_render_of_a_stopped_run_says_what_is_pending() -> None:
    stopped = replace(BASE, rows_ok=300, rows_error=0, output=None, usage_output=None,
                      stopped="stopped: HTTP 402 Payment Required: no credits")
    lines = stopped.render().splitlines()
    assert "  stopped   HTTP 402 Payment Required: no credits" in lines
    assert "  pending   900 rows not answered yet: run the same command again to resume" in lines
    assert not any(line.startswith("  output") for line in lines)
    assert stopped.as_dict()["output"] is None


def test_summary_of_a_real_run_with_dedup_and_failures(tmp_path: Path, sim) -> None:
    server = sim()
    server.rule("number 1.", Step.status(400, "bad"))
    rows = [{"id": i, "prompt": f"Summarize review number {i % 4}."} for i in range(8)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--temperature", 0, env=clean_env())
    assert result.returncode == 1, result.stderr
    text = result.stdout
    assert text.startswith("batchrun: 8 rows: 6 ok, 2 error")
    assert "  requests  4 sent" in text  # 4 distinct prompts, each sent once
    assert "  dedup     4 rows repeated an identical request: 4 requests saved" in text
    assert "  errors    2 rows failed" in text
    assert f"  output    {out}" in text and f"  usage     {tmp_path / 'out.usage.parquet'}" in text
    again = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url, "--model", "sim-1",
                    "--temperature", 0, env=clean_env())
    assert again.returncode == 1
    assert "(4 answered by earlier runs, not sent again)" in again.stdout
    assert "  requests  0 sent" in again.stdout


def test_pending_hint_is_not_repeated() -> None:
    reason = "interrupted by SIGINT; finished rows are saved: run the same command again to resume"
    lines = replace(BASE, rows_ok=10, rows_error=0, stopped=reason).render().splitlines()
    assert f"  stopped   {reason}" in lines
    assert "  pending   1,190 rows not answered yet" in lines


def test_one_row_reads_as_one_row_in_the_summary_and_the_plan(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 1)
    planned = run_cli("plan", "--input", src, "--base-url", server.base_url, "--model", "sim-1")
    assert f"  input     {src}: 1 row\n" in planned.stdout
    assert "  to send   1 request now\n" in planned.stdout
    ran = run_job(src, tmp_path / "out.parquet", server.base_url, check=True)
    assert ran.stdout.startswith("batchrun: 1 row: 1 ok, 0 error\n")
    assert " 1 rows" not in planned.stdout + ran.stdout
