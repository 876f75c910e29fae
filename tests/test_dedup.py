"""Identical requests in one input are sent once when deterministic (temperature 0) or with --dedup.

Every row that asked gets the answer; the copies carry no usage, so the output's usage sums equal
what the simulator billed; `--no-dedup` sends each; the summary says how many requests were saved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from batchrun.sim import expected_answer

from .helpers import read_output, run_job, write_csv

DISTINCT, REPEATS = 20, 3


def _input(tmp_path: Path) -> Path:
    # Row i asks prompt i % 20: each prompt three times, copies far apart and across batches.
    rows = [{"id": i, "prompt": f"Classify ticket {i % DISTINCT}."} for i in range(DISTINCT * REPEATS)]
    return write_csv(tmp_path / "in.csv", rows)


def _check(out: Path, server: Any) -> list[dict[str, Any]]:
    """Every row answered with its own prompt's answer; usage sums equal the simulator's bill."""
    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(DISTINCT * REPEATS)]
    for row in rows:
        content, _ = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"]) == ("ok", content)
    stats = server.stats
    for column, billed in (("prompt_tokens", stats.billed_prompt_tokens),
                           ("completion_tokens", stats.billed_completion_tokens),
                           ("total_tokens", stats.billed_total_tokens)):
        assert sum(r[column] for r in rows) == billed, column
    meta = orjson.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["total_tokens"] == stats.billed_total_tokens
    usage = pq.read_table(out.with_name(out.stem + ".usage.parquet")).to_pylist()
    assert sum(u["total_tokens"] for u in usage) == stats.billed_total_tokens
    assert sum(u["requests"] for u in usage) == stats.requests
    assert sum(u["rows_ok"] for u in usage) == len(rows)
    return rows


def _saved_line(stdout: str) -> str | None:
    lines = [line for line in stdout.splitlines() if line.strip().lower().startswith("dedup")]
    return lines[0] if lines else None


def test_temperature_zero_sends_each_distinct_request_once(tmp_path: Path, sim) -> None:
    server = sim()
    src, out = _input(tmp_path), tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--temperature", "0", check=True)
    assert server.stats.requests == DISTINCT
    assert set(server.stats.billed_by_prompt.values()) == {1}
    rows = _check(out, server)
    # The first row of each prompt carries its usage; the copies carry none.
    firsts = rows[:DISTINCT]
    assert all(r["total_tokens"] > 0 and r["attempts"] == 1 for r in firsts)
    copies = rows[DISTINCT:]
    assert all(r["total_tokens"] == 0 and r["prompt_tokens"] == 0 for r in copies)
    saved = _saved_line(result.stdout)
    assert saved is not None and re.search(rf"\b{DISTINCT * (REPEATS - 1)}\b", saved), result.stdout
    # A rerun sends nothing and keeps the same answers.
    run_job(src, out, server.base_url, "--temperature", "0", check=True)
    assert server.stats.requests == DISTINCT
    assert read_output(out) == rows


def test_no_dedup_sends_each_row_and_a_rerun_sends_nothing(tmp_path: Path, sim) -> None:
    server = sim()
    src, out = _input(tmp_path), tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--temperature", "0", "--no-dedup", check=True)
    assert server.stats.requests == DISTINCT * REPEATS
    assert set(server.stats.billed_by_prompt.values()) == {REPEATS}
    assert _saved_line(result.stdout) is None
    rows = _check(out, server)
    assert all(r["total_tokens"] > 0 and r["attempts"] == 1 for r in rows)
    # Each occurrence has its own journal entry: nothing is sent again on a rerun.
    run_job(src, out, server.base_url, "--temperature", "0", "--no-dedup", check=True)
    assert server.stats.requests == DISTINCT * REPEATS


def test_dedup_is_off_by_default_above_zero_and_forced_by_the_flag(tmp_path: Path, sim) -> None:
    server = sim()
    src = _input(tmp_path)
    run_job(src, tmp_path / "warm.parquet", server.base_url, "--temperature", "0.7", check=True)
    assert server.stats.requests == DISTINCT * REPEATS  # sampling: each row may differ, each sent
    server.reset_stats()
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--temperature", "0.7", "--dedup", check=True)
    assert server.stats.requests == DISTINCT
    _check(out, server)
    assert _saved_line(result.stdout) is not None
