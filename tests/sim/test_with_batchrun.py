"""batchrun itself against the simulator's keys and contexts: a used-up balance stops a one-endpoint
run (exit 3, progress kept), and a row over the model's context is an error sent once."""

from __future__ import annotations

from pathlib import Path

from batchrun.sim import Account

from ..helpers import clean_env, prompts_csv, read_output, run_job, write_csv

KEY = "sk-sim-credits-7c1d"


def test_a_key_out_of_credits_stops_the_run_with_exit_3_and_keeps_what_was_paid(
        tmp_path: Path, sim) -> None:
    server = sim(accounts=(Account(KEY, credits=0.0003),))
    src, out = prompts_csv(tmp_path / "in.csv", 30), tmp_path / "out.parquet"
    env = clean_env(SIM_KEY=KEY)
    result = run_job(src, out, server.base_url, "--api-key-env", "SIM_KEY", "--concurrency", "1",
                     env=env)
    assert result.returncode == 3, result.stderr
    assert "credits" in result.stderr.lower() and KEY not in result.stderr
    mine = server.stats.by_key[KEY]
    assert 0 < mine.ok < 30 and mine.no_credits >= 1 and server.balance(KEY) <= 0
    # The rerun meets the same 402 at once and pays for nothing again.
    again = run_job(src, out, server.base_url, "--api-key-env", "SIM_KEY", env=env)
    assert again.returncode == 3
    assert set(server.stats.billed_by_prompt.values()) == {1}


def test_a_row_over_the_models_context_is_an_error_sent_once(tmp_path: Path, sim) -> None:
    server = sim(models=("small",), context_lengths={"small": 300})
    rows = [{"prompt": "short one"}, {"prompt": "long " * 300}, {"prompt": "short two"}]
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, model="small")
    assert result.returncode == 1, result.stderr
    statuses = [(r["status"], r["attempts"]) for r in read_output(out)]
    assert statuses == [("ok", 1), ("error", 1), ("ok", 1)]
    assert "maximum context length is 300 tokens" in read_output(out)[1]["error"]
    assert server.stats.status_counts == {200: 2, 400: 1}
