"""`batchrun run` end to end: real CLI, real HTTP on loopback, the simulator as the provider."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchrun.sim import Step, expected_answer

from .helpers import clean_env, prompts_csv, read_output, run_cli, write_csv


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _plain(summary: str) -> str:
    """The summary with thousands separators dropped ("2,000" -> "2000")."""
    return re.sub(r"(?<=\d),(?=\d{3})", "", summary)


def test_2000_rows_at_concurrency_64_come_back_complete_in_order_each_with_its_own_answer(
    tmp_path: Path, sim
) -> None:
    server = sim(latency=0.01, latency_jitter=0.01, seed=7)
    src = prompts_csv(tmp_path / "in.csv", 2000, text="Summarize review number {i}, please.")
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", 64, "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert len(rows) == 2000
    assert [r["id"] for r in rows] == [str(i) for i in range(2000)]
    for i, row in enumerate(rows):
        assert row["prompt"] == f"Summarize review number {i}, please."
        content, finish = expected_answer(_user(row["prompt"]))
        assert (row["response"], row["finish_reason"]) == (content, finish), f"row {i}"
        assert (row["status"], row["error"], row["attempts"]) == ("ok", None, 1)
    # Random latency really did interleave the answers: many requests were in flight at once.
    assert server.stats.max_in_flight > 16
    assert server.stats.max_in_flight <= 64
    assert server.stats.requests == server.stats.ok == 2000
    assert "2000 rows: 2000 ok, 0 error" in _plain(result.stdout)


def test_per_row_tokens_add_up_to_metadata_sidecar_and_the_providers_bill(
    tmp_path: Path, sim
) -> None:
    server = sim(latency=0.002, latency_jitter=0.002)
    src = prompts_csv(tmp_path / "in.csv", 300, text="Classify ticket {i}: the printer is on fire.")
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", 16, "--max-tokens", 12,
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    per_row = {name: sum(r[name] for r in rows)
               for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert all(r["prompt_tokens"] + r["completion_tokens"] == r["total_tokens"] for r in rows)
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert {k: meta["usage"][k] for k in per_row} == per_row
    # This simulator reports no details: unknown, not 0.
    assert meta["usage"]["cached_tokens"] is None and meta["provider_cost"] is None
    sidecar = pq.read_table(out.with_name("out.usage.parquet")).to_pylist()
    assert len(sidecar) == 1
    assert {k: sidecar[0][k] for k in per_row} == per_row
    stats = server.stats
    assert (stats.billed_prompt_tokens, stats.billed_completion_tokens,
            stats.billed_total_tokens) == tuple(per_row.values())
    assert per_row["total_tokens"] > 0
    # The summary prints the same total.
    assert str(per_row["total_tokens"]) in _plain(result.stdout)


def test_a_row_the_server_refuses_with_400_fails_alone_with_a_readable_error(
    tmp_path: Path, sim
) -> None:
    server = sim()
    server.rule("REFUSE", Step.status(400, "bad request: this prompt cannot be served"))
    prompts = [f"Summarize note {i}." for i in range(30)]
    prompts[4] = "REFUSE this one, note 4."
    prompts[17] = "REFUSE this one too, note 17."
    src = write_csv(tmp_path / "in.csv", [{"id": i, "prompt": p} for i, p in enumerate(prompts)])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress")
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    assert [r["prompt"] for r in rows] == prompts
    for i, row in enumerate(rows):
        if i in (4, 17):
            assert row["status"] == "error"
            assert row["response"] is None and row["total_tokens"] is None
            assert row["finish_reason"] == "error"
            assert row["attempts"] == 1  # a 400 is never retried
            error = row["error"]
            assert "\n" not in error
            assert "400" in error  # the HTTP status
            assert "Bad Request" in error or "invalid_request_error" in error  # the class
            assert "bad request: this prompt cannot be served" in error  # the provider's words
        else:
            assert row["status"] == "ok", row["error"]
            assert row["response"] == expected_answer(_user(row["prompt"]))[0]
    assert server.stats.status_counts == {200: 28, 400: 2}
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["rows"] == {"total": 30, "ok": 28, "error": 2}
    assert "30 rows: 28 ok, 2 error" in _plain(result.stdout)


def test_simulate_command_prints_its_url_serves_a_run_and_stops_on_sigterm(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "batchrun", "simulate", "--port", "0", "--latency", "0.001"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("batchrun simulator listening on http://127.0.0.1:"), line
            base_url = line.rsplit(" ", 1)[1]
            assert base_url.endswith("/v1")
            src = prompts_csv(tmp_path / "in.csv", 40)
            out = tmp_path / "out.parquet"
            result = run_cli("run", "--input", src, "--output", out, "--base-url", base_url,
                             "--model", "sim-1", "--no-progress")
            assert result.returncode == 0, result.stderr
            rows = read_output(out)
            assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
            assert rows[7]["response"] == expected_answer(_user(rows[7]["prompt"]))[0]
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=10)
            assert proc.returncode == 0
            assert "Traceback" not in stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.slow
def test_the_demo_job_runs_from_the_repository_root(tmp_path: Path) -> None:
    """`jobs/demo.toml` (what `make demo` runs) answers every sample review against the simulator."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "demo.parquet"
    result = run_cli("run", "jobs/demo.toml", "--output", out, "--no-progress", cwd=root)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert len(rows) >= 250
    assert {r["status"] for r in rows} == {"ok"}
    assert list(rows[0])[:6] == ["id", "product", "category", "rating", "language", "review"]
    assert all(r["response"] and r["total_tokens"] > 0 for r in rows)
    assert f"{len(rows)} rows: {len(rows)} ok, 0 error" in _plain(result.stdout)
