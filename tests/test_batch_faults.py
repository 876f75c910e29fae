"""Batches that expire half done, lines that fail with 500, a prompt too long for the model, and a
file that fails validation: the run ends complete or says why, and nothing is billed twice."""

from __future__ import annotations

import json
from pathlib import Path

from batchrun.sim import CONTEXT_LIMIT

from .batch_support import batch_args, check_billed_once, check_complete, env
from .helpers import journal_count, prompts_csv, read_output, run_cli, write_csv


def test_expired_and_failed_lines_are_sent_again_until_complete_and_a_too_long_prompt_is_a_row_error(
        tmp_path: Path, sim) -> None:
    # Every batch expires with 40% of its lines undone, and 5% of the lines it does answer fail
    # with 500: what is left goes into the next batch until every row is answered.
    server = sim(batch_duration_s=0, batch_expire_after_fraction=0.6, batch_fail_rate=0.05,
                       seed=7)
    n = 200
    long_row = 137
    rows = [{"id": i, "prompt": f"Summarize review number {i}."} for i in range(n)]
    rows[long_row]["prompt"] = "word " * (CONTEXT_LIMIT + 1000)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(src, out, server.base_url, "--max-attempts", 12,
                                 "--log-format", "json"), env=env())
    assert result.returncode == 1, result.stderr[-2000:]
    written = check_complete(out, n, skip=frozenset({long_row}))
    bad = written[long_row]
    assert bad["status"] == "error" and "context" in bad["error"] and bad["response"] is None
    check_billed_once(server, [r["prompt"] for i, r in enumerate(written) if i != long_row])
    assert server.stats.batches_created > 3  # the expiries really happened, and were resubmitted
    events = [json.loads(line) for line in result.stderr.splitlines()]
    collected = [e for e in events if e["event"] == "batch_collected"]
    assert collected[0]["status"] == "expired" and collected[0]["returned"] >= n * 0.4
    assert any(r["attempts"] > 1 for r in written)  # resubmitted rows count their batches


def test_rows_a_batch_cannot_answer_go_online_with_batch_fallback(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0, batch_expire_after_fraction=0.5)
    n = 30
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(src, out, server.base_url, "--batch-fallback", "online"),
                     env=env())
    assert result.returncode == 0, result.stderr
    assert server.stats.batches_created == 1
    assert server.stats.batch_lines_billed == n // 2
    assert server.stats.ok - server.stats.batch_lines_billed == n - n // 2  # online, at once
    written = check_complete(out, n)
    check_billed_once(server, [r["prompt"] for r in written])
    assert sum(r["latency_ms"] is not None for r in written) == n - n // 2


def test_a_batch_that_fails_validation_stops_with_the_reason_and_its_rows_stay_pending(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0, batch_max_lines=10)  # a provider with a smaller limit
    n = 25
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(src, out, server.base_url, "--batch-size", 20), env=env())
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "failed validation" in last and "at most 10" in last and "stay pending" in last
    assert journal_count(out, "1") == 0 and not out.exists()
    assert server.stats.batch_lines_billed <= n - 20  # only the valid second file's lines
    fixed = run_cli(*batch_args(src, out, server.base_url, "--batch-size", 10), env=env())
    assert fixed.returncode == 0, fixed.stderr
    check_billed_once(server, [r["prompt"] for r in read_output(out)])
