"""Token estimates calibrated from the provider's usage, end to end: the real CLI against a
simulator whose tokenizer counts prompts unlike ours (`tokenizer_ratio`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from batchrun.protocol.tokens import count_prompt_tokens

from .helpers import journal_file, prompts_csv, read_output, run_cli, run_job

ROWS = 60
MAX_TOKENS = 10


def learned(out: Path) -> dict[str, dict[str, float]]:
    """The token ratio the run kept in its journal's meta, per model."""
    with sqlite3.connect(journal_file(out)) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'token_ratio'").fetchone()
    return dict(json.loads(value))


@pytest.mark.slow
def test_a_tokenizer_counting_twice_ours_is_learned_paced_and_kept_for_plan(
        tmp_path: Path, sim) -> None:
    prompt = [{"role": "user", "content": "Summarize review number 10."}]
    server_cost = 2 * count_prompt_tokens(prompt) + MAX_TOKENS  # what the server charges per request
    tpm = server_cost * 20 * 60  # 20 requests a second as the server counts them
    # No rate-limit headers: only the answers' usage can tell the run how the server counts.
    server = sim(tpm=tpm, window_s=1.0, latency=0.02, tokenizer_ratio=2.0, rate_limit_headers=False)
    src = prompts_csv(tmp_path / "in.csv", ROWS)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--tpm", tpm, "--max-tokens", MAX_TOKENS,
                     "--concurrency", 8)
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "ok" for r in read_output(out))
    # Booked at our own estimate the run would start 1.6x what the server allows; calibrated
    # from the first answers it keeps to the limit (the first requests go before any answer).
    assert server.stats.rate_limited <= 5
    kept = learned(out)["sim-1"]
    assert abs(kept["ratio"] - 2.0) < 0.1 and kept["answers"] == ROWS

    # plan, for more rows on the same output, scales its prompt estimate and says where from.
    more = prompts_csv(tmp_path / "more.csv", ROWS + 40)
    common = ("--output", out, "--base-url", server.base_url, "--model", "sim-1",
              "--max-tokens", MAX_TOKENS)
    plan = json.loads(run_cli("plan", "--input", more, *common, "--format", "json").stdout)
    tokens = plan["tokens"]
    assert plan["to_send"] == 40
    assert (tokens["prompt_ratio_source"], tokens["prompt_ratio_answers"]) == ("journal", ROWS)
    assert abs(tokens["prompt_ratio"] - 2.0) < 0.1
    ours = sum(count_prompt_tokens([{"role": "user", "content": f"Summarize review number {i}."}])
               for i in range(ROWS, ROWS + 40))
    assert abs(tokens["prompt_estimate"] - 2 * ours) <= 0.05 * 2 * ours
    text = run_cli("plan", "--input", more, *common).stdout
    assert f"as the provider counted {ROWS} earlier answers on this output" in text
    # --fresh starts over: no earlier answers, our own estimate.
    fresh = json.loads(run_cli("plan", "--input", more, *common, "--fresh", "--format",
                               "json").stdout)
    assert (fresh["tokens"]["prompt_ratio"], fresh["tokens"]["prompt_ratio_source"]) == (
        1.0, "estimate")


def test_budget_holds_are_calibrated_so_a_budget_is_never_passed(tmp_path: Path, sim) -> None:
    # Long prompts, short answers: the prompt is most of what a request costs. The server counts
    # each prompt as twice our estimate; held at our estimate, the requests in flight at the end
    # would pass the budget by up to 16 prompts.
    server = sim(latency=0.03, tokenizer_ratio=2.0)
    text = "Summarize review {i} in one line: " + "the kettle boils fast and the lid sticks; " * 18
    src = prompts_csv(tmp_path / "in.csv", 80, text=text)
    out = tmp_path / "out.parquet"
    ours = count_prompt_tokens([{"role": "user", "content": text.format(i=10)}])
    budget = 25 * (2 * ours + 5)  # about 25 requests as the server counts them
    result = run_job(src, out, server.base_url, "--max-tokens", 5, "--concurrency", 16,
                     "--max-total-tokens", budget)
    assert result.returncode == 3, result.stderr
    assert "budget reached: --max-total-tokens" in result.stderr
    used = server.stats.billed_total_tokens
    assert 10 * (2 * ours) < used <= budget


def test_a_plan_with_no_earlier_answers_uses_our_estimate(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.parquet"
    plan = json.loads(run_cli("plan", "--input", src, "--output", out, "--base-url",
                              "http://127.0.0.1:9/v1", "--model", "sim-1", "--format",
                              "json").stdout)
    assert (plan["tokens"]["prompt_ratio"], plan["tokens"]["prompt_ratio_source"],
            plan["tokens"]["prompt_ratio_answers"]) == (1.0, "estimate", 0)
