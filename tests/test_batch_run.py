"""The Batch API backend end to end: the real CLI against the simulator's batches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchrun.settings.prices import BUILTIN_PRICES

from .batch_support import (
    batch_args,
    check_billed_once,
    check_complete,
    env,
    totals,
)
from .helpers import cli_in_process, journal_count, prompts_csv, run_cli


def test_a_large_run_in_batches_is_complete_ordered_billed_once_at_half_price(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0.3, batch_shuffle=True)
    n = 2_500
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(src, out, server.base_url, "--batch-size", 1000,
                                 "--log-format", "json", progress=True), env=env())
    assert result.returncode == 0, result.stderr[-2000:]
    rows = check_complete(out, n)
    check_billed_once(server, [r["prompt"] for r in rows])
    assert server.stats.batches_created == 3  # 1,000 + 1,000 + 500 lines
    assert server.stats.batch_lines_billed == n
    meta = totals(out)
    stats = server.stats
    assert meta["usage"] == {"prompt_tokens": stats.billed_prompt_tokens,
                             "completion_tokens": stats.billed_completion_tokens,
                             "total_tokens": stats.billed_total_tokens,
                             "cached_tokens": None, "reasoning_tokens": None}
    online = BUILTIN_PRICES["sim-1"].cost(stats.billed_prompt_tokens,
                                          stats.billed_completion_tokens)
    assert meta["cost_usd"] == pytest.approx(online / 2)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(online / 2)
    usage = pq.read_table(tmp_path / "out.usage.parquet").to_pylist()
    assert usage[0]["rows_ok"] == n and usage[0]["cost_usd"] == pytest.approx(online / 2)
    # The JSON log tells each batch's story: submitted, its status and counts, collected.
    events = [json.loads(line) for line in result.stderr.splitlines()]
    submitted = [e for e in events if e["event"] == "batch"
                 and (e["note"] or "").startswith("submitted")]
    assert sorted(e["batch_id"] for e in submitted) == sorted(
        {e["batch_id"] for e in events if e["event"] == "batch_collected"})
    assert {e["status"] for e in events if e["event"] == "batch"} >= {"validating", "completed"}
    progress = [e for e in events if e["event"] == "progress" and e["batches"]]
    assert progress and {"id", "status", "completed", "failed", "total"} == set(
        progress[0]["batches"][0])


def test_a_provider_without_a_batch_api_gets_exit_2_and_nothing_is_sent(
        tmp_path: Path, sim) -> None:
    server = sim(batch_api=False)
    src = prompts_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(src, out, server.base_url), env=env())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "no Batch API" in line and "--backend online" in line and "Traceback" not in line
    assert server.stats.files_uploaded == server.stats.batches_created == 0
    assert server.stats.requests == 0 and not out.exists()


def test_max_cost_holds_the_worst_case_at_the_batch_price_before_submitting(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0)
    n = 40
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    # Worst case per row: ~14 prompt + 100 completion tokens at $0.5/$1 per 1M = ~$0.000107.
    result = run_cli(*batch_args(src, out, server.base_url, "--max-tokens", 100,
                                 "--max-cost", "0.002"), env=env())
    assert result.returncode == 3, result.stderr
    assert "budget reached" in result.stderr
    # The run waited for what it submitted within the budget: collected, not left running.
    assert server.stats.batches_created == 1
    answered = journal_count(out)
    assert answered == server.stats.batch_lines_billed
    assert 10 <= answered < n  # more than online's price would allow (~9), and not all of them
    again = run_cli(*batch_args(src, out, server.base_url, "--max-tokens", 100), env=env())
    assert again.returncode == 0, again.stderr
    check_billed_once(server, [r["prompt"] for r in check_complete(out, n)])


def test_plan_shows_files_and_the_batch_price_next_to_the_online_price(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2_500)
    args = ("plan", "--input", src, "--provider", "simulator", "--model", "sim-1",
            "--max-tokens", 50, "--backend", "batch", "--batch-size", 1000)
    code, out, err = cli_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "3 input files of at most 1,000 requests" in out
    assert "at the batch price" in out and "online it would be at most" in out
    code, out, err = cli_in_process(monkeypatch, capsys, *args, "--format", "json")
    plan = json.loads(out)
    assert plan["backend"] == "batch" and plan["batch"]["files"] == 3
    assert plan["batch"]["cost_usd_max"] == pytest.approx(plan["cost_usd_max"] / 2)
    assert plan["batch"]["online_cost_usd_max"] == plan["cost_usd_max"]
    code, out, err = cli_in_process(monkeypatch, capsys, "plan", "--input", src, "--provider",
                                    "simulator", "--no-wait")
    assert code == 2 and "--no-wait applies to --backend batch" in err
