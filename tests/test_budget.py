"""Budgets stop a run before they would be passed (counting requests in flight) and resume; costs add up."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchrun.running.output import usage_path
from batchrun.settings.prices import BUILTIN_PRICES

from .helpers import journal_count, prompts_csv, read_output, run_cli

PRICE = BUILTIN_PRICES["sim-1"]  # $1 in, $2 out per million tokens


def billed_usd(stats) -> float:
    return PRICE.cost(stats.billed_prompt_tokens, stats.billed_completion_tokens)


@pytest.mark.parametrize("concurrency, latency", [(1, 0.0), (16, 0.03)])
def test_max_cost_stops_with_exit_3_and_a_rerun_completes_the_rest(
        tmp_path: Path, sim, concurrency: int, latency: float) -> None:
    server = sim(latency=latency)
    src = prompts_csv(tmp_path / "in.csv", 60, text="Please summarize customer review {i}.")
    out = tmp_path / "out.parquet"
    common = ("--input", src, "--output", out, "--base-url", server.base_url, "--model",
              "sim-1", "--max-tokens", "30", "--concurrency", str(concurrency), "--no-progress")
    budget = 0.0012  # about 20 worst-case requests (~17 prompt + 30 completion tokens each)
    stopped = run_cli("run", *common, "--max-cost", budget)
    assert stopped.returncode == 3, stopped.stderr
    assert "budget reached: --max-cost 0.0012 USD" in stopped.stderr.splitlines()[-1]
    spent = billed_usd(server.stats)
    assert 0 < spent <= budget
    answered = server.stats.ok
    assert 10 <= answered < 60 and server.stats.requests == answered
    assert journal_count(out, "status = 'ok'") == answered
    assert journal_count(out, "status = 'error'") == 0  # the rest stay pending, not failed
    status = run_cli("status", out)
    assert f"{60 - answered} left" in status.stdout

    resumed = run_cli("run", *common, "--max-cost", 1)
    assert resumed.returncode == 0, resumed.stderr
    assert server.stats.requests == 60  # exactly the rest was sent
    assert set(server.stats.billed_by_prompt.values()) == {1}
    rows = read_output(out)
    assert [r["status"] for r in rows] == ["ok"] * 60
    for row in rows:
        assert row["cost_usd"] == pytest.approx(
            PRICE.cost(row["prompt_tokens"], row["completion_tokens"]))
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["cost_usd"] == pytest.approx(billed_usd(server.stats))
    assert meta["usage"]["prompt_tokens"] == server.stats.billed_prompt_tokens
    assert meta["usage"]["completion_tokens"] == server.stats.billed_completion_tokens
    usage = pq.read_table(usage_path(out)).to_pylist()
    assert len(usage) == 1 and usage[0]["model"] == "sim-1" and usage[0]["rows_ok"] == 60
    assert usage[0]["cost_usd"] == pytest.approx(billed_usd(server.stats))
    assert usage[0]["total_tokens"] == server.stats.billed_total_tokens


def test_max_total_tokens_stops_before_passing_it(tmp_path: Path, sim) -> None:
    server = sim(latency=0.02)
    src = prompts_csv(tmp_path / "in.csv", 40)
    out = tmp_path / "out.parquet"
    common = ("--input", src, "--output", out, "--base-url", server.base_url, "--model",
              "sim-1", "--max-tokens", "40", "--concurrency", "8", "--no-progress")
    stopped = run_cli("run", *common, "--max-total-tokens", 600)
    assert stopped.returncode == 3, stopped.stderr
    assert "budget reached: --max-total-tokens 600" in stopped.stderr
    assert 0 < server.stats.billed_total_tokens <= 600
    assert journal_count(out, "status = 'error'") == 0
    assert run_cli("run", *common).returncode == 0
    assert server.stats.requests == 40 and set(server.stats.billed_by_prompt.values()) == {1}


def test_a_request_larger_than_the_whole_budget_sends_nothing(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--max-tokens", "1000", "--max-cost", "0.0001",
                     "--no-progress")
    assert result.returncode == 3 and "budget reached" in result.stderr
    assert server.stats.requests == 0


def test_cost_is_null_without_a_price_and_max_cost_is_refused(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    args = ("--input", src, "--output", out, "--base-url", server.base_url, "--model",
            "house-model", "--no-progress")
    refused = run_cli("run", *args, "--max-cost", "1")
    assert refused.returncode == 2 and "--max-cost needs a price" in refused.stderr
    assert run_cli("run", *args).returncode == 0
    assert [r["cost_usd"] for r in read_output(out)] == [None] * 3
    assert json.loads(pq.read_schema(out).metadata[b"batchrun"])["cost_usd"] is None
