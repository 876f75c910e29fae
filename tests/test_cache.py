"""`--cache PATH`: pay once per prompt across runs and outputs.

Every run here goes through the real CLI to a simulator on loopback, which bills each answer it
sends and counts them per prompt: "paid once" is read off the server, not off batchrun.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun.sim import Step, expected_answer

from .batch_support import env as batch_env
from .helpers import (
    journal_count,
    prompts_csv,
    read_output,
    run_cli,
    run_job,
    start_cli,
    wait_until,
    write_csv,
)


def _check_answers(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"], row["finish_reason"]) == ("ok", content, finish)


def _meta(path: Path) -> dict[str, Any]:
    return json.loads(pq.read_schema(path).metadata[b"batchrun"])


def test_a_second_output_pays_only_for_its_new_rows_and_plan_predicts_it(
        tmp_path: Path, sim) -> None:
    server = sim()
    cache = tmp_path / "answers.cache"
    old = [{"id": i, "prompt": f"Summarize review number {i}."} for i in range(1000)]
    first = write_csv(tmp_path / "first.csv", old)
    assert run_job(first, tmp_path / "first.parquet", server.base_url, "--cache", cache,
                   check=True).returncode == 0
    assert server.stats.requests == 1000
    assert all(r["cached"] is False for r in read_output(tmp_path / "first.parquet"))

    # Today's file: yesterday's 1,000 in another order, and 500 new.
    shuffled = old[:]
    random.Random(7).shuffle(shuffled)
    new = [{"id": i, "prompt": f"Summarize review number {i}."} for i in range(1000, 1500)]
    second = write_csv(tmp_path / "second.csv", shuffled[:600] + new + shuffled[600:])
    out = tmp_path / "second.parquet"
    plan = run_cli("plan", "--input", second, "--output", out, "--base-url", server.base_url,
                   "--model", "sim-1", "--cache", cache, "--format", "json")
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert (planned["cached"], planned["to_send"]) == (1000, 500)
    server.reset_stats()
    result = run_job(second, out, server.base_url, "--cache", cache, check=True)
    assert "cached    1,000 rows answered from the shared cache, at no cost" in result.stdout
    assert server.stats.requests == 500  # only the new rows were billed
    assert set(server.stats.billed_by_prompt) == {r["prompt"] for r in new}

    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(r["id"]) for r in shuffled[:600] + new + shuffled[600:]]
    _check_answers(rows)
    cached = {r["id"] for r in rows if r["cached"]}
    assert cached == {str(i) for i in range(1000)}
    for row in rows:
        if row["cached"]:  # paid for by the first run: nothing this run
            assert (row["prompt_tokens"], row["cost_usd"], row["attempts"]) == (0, 0.0, 0)
    meta = _meta(out)
    assert meta["rows"] == {"total": 1500, "ok": 1500, "error": 0, "cached": 1000}
    assert meta["requests"]["sent"] == 500 and meta["requests"]["retried"] == 0
    sidecar = pq.read_table(tmp_path / "second.usage.parquet").to_pylist()
    assert [(s["rows_ok"], s["rows_cached"], s["requests"]) for s in sidecar] == [(1500, 1000, 500)]
    status = run_cli("status", out)
    assert "cached    1,000 rows answered from the shared cache, at no cost" in status.stdout


def test_failed_rows_are_sent_again_and_another_model_or_parameter_is_a_miss(
        tmp_path: Path, sim) -> None:
    server = sim(models=("sim-1", "sim-large"))
    cache = tmp_path / "c.cache"
    src = prompts_csv(tmp_path / "in.csv", 20)
    server.rule("number 3.", Step.status(400, "Invalid prompt."), times=1)  # fails once, for good
    first = run_job(src, tmp_path / "a.parquet", server.base_url, "--cache", cache)
    assert first.returncode == 1, first.stderr
    server.reset_stats()
    again = run_job(src, tmp_path / "b.parquet", server.base_url, "--cache", cache, check=True)
    assert server.stats.requests == 1  # the failed row: errors are never cached
    assert set(server.stats.billed_by_prompt) == {"Summarize review number 3."}
    assert "cached    19 rows" in again.stdout
    for extra, model in ((("--temperature", "0.5"), "sim-1"), ((), "sim-large"),
                         (("--max-tokens", "40"), "sim-1")):
        server.reset_stats()
        out = tmp_path / f"miss-{model}-{len(extra)}-{extra[-1] if extra else ''}.parquet"
        run_job(src, out, server.base_url, "--cache", cache, *extra, model=model, check=True)
        assert server.stats.requests == 20, extra  # another request: a miss, every row
        assert not any(r["cached"] for r in read_output(out))


def test_two_runs_share_one_cache_at_once_and_a_third_pays_nothing(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    cache = tmp_path / "shared.cache"
    a = prompts_csv(tmp_path / "a.csv", 400)
    b = write_csv(tmp_path / "b.csv", [{"id": i, "prompt": f"Summarize review number {i}."}
                                       for i in range(200, 600)])  # 200 rows overlap
    procs = [start_cli("run", "--input", src, "--output", tmp_path / f"{src.stem}.parquet",
                       "--base-url", server.base_url, "--model", "sim-1", "--cache", cache,
                       "--concurrency", 8, "--no-progress") for src in (a, b)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for name in ("a", "b"):
        _check_answers(read_output(tmp_path / f"{name}.parquet"))
    # Each prompt billed once, or twice when both runs asked for it before either had answered.
    billed = server.stats.billed_by_prompt
    assert set(billed) == {f"Summarize review number {i}." for i in range(600)}
    assert all(billed[f"Summarize review number {i}."] == 1 for i in (*range(200), *range(400, 600)))
    server.reset_stats()
    union = prompts_csv(tmp_path / "all.csv", 600)
    run_job(union, tmp_path / "all.parquet", server.base_url, "--cache", cache, check=True)
    assert server.stats.requests == 0
    rows = read_output(tmp_path / "all.parquet")
    _check_answers(rows)
    assert all(r["cached"] for r in rows)


def test_kill_9_with_a_cache_loses_nothing_and_pays_again_at_most_what_was_in_flight(
        tmp_path: Path, sim) -> None:
    server = sim(latency=0.02)
    cache = tmp_path / "c.cache"
    n, concurrency = 400, 8
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--cache", cache, "--concurrency", concurrency, "--no-progress")
    proc = start_cli(*args)
    wait_until(lambda: journal_count(out) >= 100, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert run_cli(*args).returncode == 0
    rows = read_output(out)
    _check_answers(rows)
    billed = server.stats.billed_by_prompt
    assert set(billed) == {r["prompt"] for r in rows}
    assert sum(billed.values()) - n <= concurrency  # paid twice: at most the requests in flight
    # A second output asks the cache for every row: nothing is sent.
    server.reset_stats()
    run_job(src, tmp_path / "again.parquet", server.base_url, "--cache", cache, check=True)
    assert server.stats.requests == 0


def test_the_batch_api_submits_only_the_misses(tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0)
    cache = tmp_path / "c.cache"
    run_job(prompts_csv(tmp_path / "old.csv", 30), tmp_path / "old.parquet", server.base_url,
            "--cache", cache, check=True)
    server.reset_stats()
    src = prompts_csv(tmp_path / "in.csv", 50)
    out = tmp_path / "out.parquet"
    run_job(src, out, server.base_url, "--cache", cache, "--backend", "batch", check=True,
            env=batch_env())  # quick polls: the batch is done at once, not at the first backoff
    assert server.stats.batch_lines_billed == 20 and server.stats.requests == 0
    rows = read_output(out)
    _check_answers(rows)
    assert sum(r["cached"] for r in rows) == 30


def test_a_cache_that_is_not_one_is_exit_2_before_anything_is_sent(tmp_path: Path, sim) -> None:
    server = sim()
    bad = tmp_path / "notes.txt"
    bad.write_text("my notes, not a cache\n" * 50)
    src = prompts_csv(tmp_path / "in.csv", 5)
    result = run_job(src, tmp_path / "out.parquet", server.base_url, "--cache", bad)
    assert result.returncode == 2
    assert result.stderr == (f"batchrun: cache {bad} is not a batchrun cache (file is not a "
                             "database); check --cache, or give a new file\n")
    assert server.stats.requests == 0
    assert bad.read_text() == "my notes, not a cache\n" * 50


def test_batchrun_cache_sets_the_cache_of_every_run(tmp_path: Path, sim) -> None:
    server = sim()
    cache = tmp_path / "env.cache"
    src = prompts_csv(tmp_path / "in.csv", 10)
    from .helpers import clean_env

    env = clean_env(BATCHRUN_CACHE=str(cache))
    run_job(src, tmp_path / "a.parquet", server.base_url, env=env, check=True)
    server.reset_stats()
    run_job(src, tmp_path / "b.parquet", server.base_url, env=env, check=True)
    assert server.stats.requests == 0
    assert all(r["cached"] for r in read_output(tmp_path / "b.parquet"))


def test_a_hit_keeps_its_answer_from_being_pruned_as_unused(tmp_path: Path, sim) -> None:
    import sqlite3
    import time

    server = sim()
    cache = tmp_path / "c.cache"
    src = prompts_csv(tmp_path / "in.csv", 10)
    run_job(src, tmp_path / "a.parquet", server.base_url, "--cache", cache, check=True)
    db = sqlite3.connect(cache)  # as if last used 40 days ago
    db.execute("UPDATE answers SET used_at = ?", (time.time() - 40 * 86_400,))
    db.commit()
    db.close()
    half = write_csv(tmp_path / "half.csv",
                     [{"id": i, "prompt": f"Summarize review number {i}."} for i in range(5)])
    run_job(half, tmp_path / "b.parquet", server.base_url, "--cache", cache, check=True)
    pruned = run_cli("cache", "prune", cache, "--older-than", "30d")
    assert pruned.stdout.startswith(f"{cache}: 5 answers dropped, 5 kept")  # the 5 just used stay
