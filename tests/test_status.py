"""`batchrun status OUTPUT`: during a run, after an interrupt, after a crash, after completion."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from .helpers import journal_count, prompts_csv, run_cli, start_cli, wait_until


def _status(out: Path) -> str:
    result = run_cli("status", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def _rows(text: str) -> tuple[int, int, int, int]:
    found = re.search(r"rows +([\d,]+) total: ([\d,]+) answered, ([\d,]+) failed, ([\d,]+) left", text)
    assert found, text
    total, ok, failed, left = (int(g.replace(",", "")) for g in found.groups())
    return total, ok, failed, left


def test_status_without_a_journal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("status", tmp_path / "never.parquet")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("batchrun: no run found for ")
    assert "never.journal.sqlite" in result.stderr


def test_status_while_running_after_interrupt_after_crash_and_when_finished(
        tmp_path: Path, sim) -> None:
    server = sim(latency=0.1)
    n = 200
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "gpt-4o-mini", "--concurrency", 4, "--no-progress")

    # While a run is going: it is running, under its pid, with rows answered so far.
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= 10, proc)
    text = _status(out)
    assert f"running (pid {proc.pid})" in text.splitlines()[0]
    total, ok, failed, left = _rows(text)
    assert total == n and 10 <= ok < n and failed == 0 and left == n - ok
    assert "progress  last at " in text
    assert "model     gpt-4o-mini at " + server.base_url in text

    # After SIGTERM: stopped, with the reason and how to resume.
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    text = _status(out)
    first = text.splitlines()[0]
    assert first == f"{out}: stopped early; run the same command again to resume"
    assert "stopped   interrupted by SIGTERM" in text
    _, ok_after_term, _, left = _rows(text)
    assert ok_after_term == journal_count(out) and left == n - ok_after_term

    # After kill -9 in the middle of a resumed run: nobody holds it; the old reason is gone.
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= ok_after_term + 20, proc)
    proc.kill()
    proc.communicate(timeout=10)
    text = _status(out)
    assert "interrupted (no process holds it); run the same command again to resume" in text
    assert "SIGTERM" not in text
    assert _rows(text)[1] == journal_count(out)

    # Finished: everything answered; usage equals what the simulator billed; a price is known.
    result = run_cli(*args, "--concurrency", 32)  # the rest at once: nothing to catch mid-way now
    assert result.returncode == 0, result.stderr
    text = _status(out)
    assert text.splitlines()[0] == f"{out}: finished"
    assert _rows(text) == (n, n, 0, 0)
    stats = server.stats
    assert (f"tokens    {stats.billed_prompt_tokens:,} prompt + {stats.billed_completion_tokens:,} "
            f"completion = {stats.billed_total_tokens:,}") in text
    assert re.search(r"cost      \$0\.\d{4}\n", text)
    assert "ended     at " in text


def test_status_of_a_no_wait_batch_counts_its_requests_and_cost_as_not_yet_answered(
        tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=60)
    src = prompts_csv(tmp_path / "in.csv", 12)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "gpt-4o-mini", "--backend", "batch", "--no-wait", "--no-progress")
    assert result.returncode == 75, result.stderr
    text = _status(out)
    assert "requests  0 sent for these rows; 12 in live Batch API batches" in text
    assert "cost      $0 so far: nothing answered yet" in text  # a priced model, nothing billed yet


def test_status_of_an_unpriced_model_says_no_price_is_known(tmp_path: Path, sim) -> None:
    server = sim(models=("local-llama",))
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "local-llama", "--no-progress")
    assert result.returncode == 0, result.stderr
    text = _status(out)
    assert "cost      unknown: no price is known for local-llama" in text
    assert "requests  3 sent for these rows\n" in text
