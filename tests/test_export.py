"""`batchrun export OUTPUT`: what a stopped or running run has so far, every row, the rest pending.

A run stopped by a job-wide failure (exit 3) or a signal (exit 130) writes no output; export lays
its journal out with the finished output's columns and order, and says in its metadata that the
file is partial. The finished output's contract is unchanged: a later run completes it as ever.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun.sim import Step, expected_answer

from .helpers import journal_count, prompts_csv, read_output, run_cli, run_job, start_cli, wait_until


def _check_partial(path: Path, n: int, output: Path) -> list[dict[str, Any]]:
    """Every input row in order; the answered ones right, the rest pending; metadata partial."""
    rows = read_output(path)
    assert [r["id"] for r in rows] == [str(i) for i in range(n)]
    for row in rows:
        if row["status"] == "ok":
            content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
            assert (row["response"], row["finish_reason"]) == (content, finish)
            assert row["prompt_tokens"] > 0 and row["attempts"] >= 1
        else:
            assert row["status"] == "pending", row
            assert row["response"] is None and row["finish_reason"] is None
            assert row["attempts"] == 0 and row["error"] is None
    meta = json.loads(pq.read_schema(path).metadata[b"batchrun"])
    ok = sum(r["status"] == "ok" for r in rows)
    assert meta["partial"] is True
    assert meta["rows"] == {"total": n, "ok": ok, "error": 0, "pending": n - ok}
    assert meta["usage"]["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in rows)
    assert not output.exists()  # the finished output is not written by an export
    return rows


def test_export_after_a_job_wide_stop_has_every_row_and_the_stopped_run_names_it(
        tmp_path: Path, sim) -> None:
    server = sim()
    n = 60
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    server.rule("number 40.", Step.status(402, "Insufficient credits"), times=1)  # job-wide: exit 3
    result = run_job(src, out, server.base_url, "--concurrency", 1)
    assert result.returncode == 3, result.stderr
    assert f"partial   batchrun export {out} writes what is answered so far" in result.stdout

    done = run_cli("export", out)
    assert done.returncode == 0, done.stderr
    partial = tmp_path / "out.partial.parquet"
    rows = _check_partial(partial, n, out)
    answered = sum(r["status"] == "ok" for r in rows)
    assert answered == journal_count(out) and 0 < answered < n
    assert done.stdout == (f"{partial}: {n} rows: {answered} ok, 0 error, {n - answered} pending "
                           "(partial)\n")

    # The finished output is as ever: the rerun sends only the rest and writes it whole.
    assert run_job(src, out, server.base_url).returncode == 0
    assert [r["status"] for r in read_output(out)] == ["ok"] * n
    assert server.stats.requests == answered + 1 + (n - answered)


def test_export_after_an_interrupt_and_while_running_to_a_chosen_path(tmp_path: Path, sim) -> None:
    server = sim(latency=0.03)
    n = 300
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    proc = start_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", 4, "--no-progress")
    wait_until(lambda: journal_count(out) >= 20, proc)
    running = run_cli("export", out, "--to", tmp_path / "live.parquet")  # no lock taken
    assert running.returncode == 0, running.stderr
    assert proc.poll() is None  # the run went on
    live = _check_partial(tmp_path / "live.parquet", n, out)
    assert sum(r["status"] == "ok" for r in live) >= 20

    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"batchrun export {out}" in stdout
    done = run_cli("export", out, "--to", tmp_path / "after.parquet")
    assert done.returncode == 0, done.stderr
    after = _check_partial(tmp_path / "after.parquet", n, out)
    assert sum(r["status"] == "ok" for r in after) == journal_count(out)


def test_export_of_a_jsonl_output_is_batch_jsonl_with_pending_lines(tmp_path: Path, sim) -> None:
    server = sim()
    n = 30
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.jsonl"
    server.rule("number 20.", Step.status(401, "Invalid API key"), times=1)
    result = run_job(src, out, server.base_url, "--concurrency", 1, "--id-column", "id")
    assert result.returncode == 3, result.stderr
    done = run_cli("export", out)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.partial.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [str(i) for i in range(n)]
    answered = [line for line in lines if line["response"] is not None]
    assert len(answered) == journal_count(out) > 0
    assert all(line["response"]["status_code"] == 200 for line in answered)


def test_export_without_a_run_or_to_another_format_is_one_line_and_exit_2(
        tmp_path: Path, sim) -> None:
    missing = run_cli("export", tmp_path / "never.parquet")
    assert missing.returncode == 2
    assert missing.stderr.startswith("batchrun: no run found for ")
    assert missing.stderr.count("\n") == 1
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    assert run_job(src, out, server.base_url).returncode == 0
    wrong = run_cli("export", out, "--to", tmp_path / "x.jsonl")
    assert wrong.returncode == 2
    assert wrong.stderr == ("batchrun: --to " + str(tmp_path / "x.jsonl") + ": an export keeps the "
                            "output's format; name it out.partial.parquet\n")
