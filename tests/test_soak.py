"""Fault soak: every kind of transient failure at once; every row still ends with its own answer.

The simulator bills only the 200 answers it sends in full: a dropped connection, a hang, a 5xx,
a stray 429 and a garbled body are decided before any answer is made (see `_respond` and
`_fault` in batchrun/sim/server.py), so the client can read every answer that was billed. Hence
the output's usage totals must equal what the simulator billed, token for token, and no prompt
may be billed twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchrun.sim import expected_answer

from .helpers import prompts_csv, read_output, run_cli

ROWS = 1500


@pytest.mark.slow
def test_every_row_survives_a_storm_of_faults_billed_exactly_once(tmp_path: Path, sim) -> None:
    server = sim(fail_rate=0.05, drop_rate=0.02, garbage_rate=0.01, hang_rate=0.01,
                 stray_429_rate=0.01, latency=0.01, seed=11)
    src = prompts_csv(tmp_path / "in.csv", ROWS)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", 48, "--timeout", 3,
                     "--max-attempts", 12, "--max-tokens", 60, "--no-progress")
    assert result.returncode == 0, result.stderr
    stats = server.stats
    # The storm really happened.
    assert stats.requests > ROWS * 1.08
    assert stats.dropped >= 10 and stats.rate_limited >= 5
    assert sum(n for code, n in stats.status_counts.items() if code >= 500) >= 40

    rows = read_output(out)
    assert len(rows) == ROWS
    for row in rows:
        content, finish = expected_answer([{"role": "user", "content": row["prompt"]}], 60)
        assert (row["status"], row["response"], row["finish_reason"]) == ("ok", content, finish)
    # Exact usage: the output's totals are what was billed, and nothing was billed twice.
    meta = json.loads(pq.read_metadata(out).metadata[b"batchrun"])
    assert meta["usage"] == {
        "prompt_tokens": stats.billed_prompt_tokens,
        "completion_tokens": stats.billed_completion_tokens,
        "total_tokens": stats.billed_total_tokens,
        "cached_tokens": None, "reasoning_tokens": None,  # this simulator reports no details
    }
    assert sum(r["total_tokens"] for r in rows) == stats.billed_total_tokens
    assert stats.ok == ROWS and len(stats.billed_by_prompt) == ROWS
    assert set(stats.billed_by_prompt.values()) == {1}
    # Every request sent is accounted for: one per row plus the retries.
    assert meta["this_run"]["requests_sent"] == stats.requests
    assert meta["this_run"]["retries"] == stats.requests - ROWS
    assert meta["this_run"]["rate_limited"] == stats.rate_limited
    assert sum(r["attempts"] for r in rows) == stats.requests
