"""Several endpoints on the Ray engine: one limiter actor per endpoint, each worker routing its
rows among the endpoints as the local pool does, an endpoint retired in one worker retired in
all, one journal. The real CLI joins the session's two-node cluster (`ray_address`), against
simulators on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.running.output import usage_path
from batchrun.settings.endpoints import Endpoint
from batchrun.sim import Step
from batchrun.sim.config import Account

from .helpers import clean_env, prompts_csv, read_output, run_cli, run_job, write_csv
from .test_endpoints_pool import by_endpoint, endpoint, pool_job

pytestmark = pytest.mark.ray


def ray_pool(tmp_path: Path, src: Path, address: str, *endpoints: Endpoint,
             env: dict[str, str] | None = None, extra: tuple[Any, ...] = ()
             ) -> CompletedProcess[str]:
    """`batchrun run JOB --engine ray` of `src` on these endpoints, two workers."""
    job = pool_job(tmp_path / "job.toml", src, tmp_path / "out.parquet", endpoints)
    result = run_cli("run", job, "--no-progress", "--max-attempts", 2, "--engine", "ray",
                     "--workers", 2, "--ray-address", address, *extra,
                     env=clean_env(**(env or {})), timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def long_and_short(n: int, long: Any) -> list[dict[str, str]]:
    return [{"prompt": ("word " * 100 if long(i) else "") + f"question {i}"} for i in range(n)]


def test_two_keys_split_the_rows_by_their_limits_each_under_its_own(
        tmp_path: Path, sim, ray_address) -> None:
    # One provider, two keys, each limited over 1-second windows: each endpoint's --rpm is its
    # total across the cluster's two workers (its own limiter actor), so neither key goes over.
    server = sim(latency=0.01, accounts=(Account("sk-a", rpm=3000, window_s=1.0),
                                         Account("sk-b", rpm=1500, window_s=1.0)))
    src, cache = prompts_csv(tmp_path / "in.csv", 120), tmp_path / "cache.sqlite"
    pair = (endpoint("A", server, api_key_env="KEY_A", rpm=3000, concurrency=8),
            endpoint("B", server, api_key_env="KEY_B", rpm=1500, concurrency=8))
    keys = {"KEY_A": "sk-a", "KEY_B": "sk-b"}
    result = ray_pool(tmp_path, src, ray_address, *pair, env=keys, extra=("--cache", cache))
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" for r in rows)
    split = by_endpoint(rows)
    a, b = server.stats.by_key["sk-a"], server.stats.by_key["sk-b"]
    assert a.ok == split["A"] and b.ok == split["B"] and split["A"] + split["B"] == 120
    assert 1.3 <= split["A"] / split["B"] <= 3.0, split  # about 2:1, as their limits
    assert set(server.stats.by_key) == {"sk-a", "sk-b"}  # each key went to its endpoint only
    # No key over its limit: at most noise of 429s (a limit each worker kept on its own, twice
    # the key's, would draw about half the requests refused).
    for key in (a, b):
        assert key.rate_limited <= 2 + 0.1 * key.requests, (a, b)
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 120
    assert {r["model"] for r in rows if r["endpoint"] == "B"} == {"m-B"}
    # Each endpoint's counters, summed over the workers, reach the output's metadata.
    meta = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"batchrun"])
    assert {name: meta["endpoints"][name]["this_run"]["requests_sent"] for name in "AB"} == {
        "A": a.requests, "B": b.requests}
    # --cache: each answer is kept for the endpoint that gave it; a local run of the same pool
    # on another output takes every row from the cache, each for its endpoint.
    job = pool_job(tmp_path / "again.toml", src, tmp_path / "again.parquet", pair)
    again = run_cli("run", job, "--no-progress", "--cache", cache, env=clean_env(**keys))
    assert again.returncode == 0, again.stderr
    cached = read_output(tmp_path / "again.parquet")
    assert all(r["cached"] for r in cached) and by_endpoint(cached) == split
    assert server.stats.requests == a.requests + b.requests


def test_when_every_endpoint_retires_the_cluster_stops_naming_each_reason(
        tmp_path: Path, sim, ray_address) -> None:
    locked, broke = sim(), sim()
    locked.rule("", Step.status(401, "Incorrect API key provided", code_str="invalid_api_key"))
    broke.rule("", Step.status(402, "Insufficient credits"))
    src = prompts_csv(tmp_path / "in.csv", 40)
    result = ray_pool(tmp_path, src, ray_address, endpoint("A", locked, concurrency=2),
                      endpoint("B", broke, concurrency=2))
    assert result.returncode == 3, result.stderr
    assert "no endpoint is left" in result.stderr
    assert "A: HTTP 401" in result.stderr and "B: HTTP 402" in result.stderr
    # Each endpoint was retired by the requests in flight, not one request per row.
    assert locked.stats.requests <= 4 and broke.stats.requests <= 4


def test_an_endpoint_out_of_credits_with_a_small_context_leaves_the_run_to_the_other(
        tmp_path: Path, sim, ray_address) -> None:
    # A's key runs out after about ten answers, and A's model takes no long row; B finishes.
    server = sim(latency=0.005, accounts=(Account("sk-a", credits=0.1), Account("sk-b")),
                 prices={"m-A": (1000.0, 500.0, 0.0)}, context_lengths={"m-A": 60})
    src = write_csv(tmp_path / "in.csv", long_and_short(80, lambda i: i % 8 == 0))
    result = ray_pool(tmp_path, src, ray_address,
                      endpoint("A", server, api_key_env="KEY_A", concurrency=4),
                      endpoint("B", server, api_key_env="KEY_B", concurrency=4),
                      env={"KEY_A": "sk-a", "KEY_B": "sk-b"})
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" for r in rows)
    split = by_endpoint(rows)
    a, b = server.stats.by_key["sk-a"], server.stats.by_key["sk-b"]
    assert 0 < split["A"] == a.ok < 40 and split["B"] == b.ok == 80 - a.ok
    long_rows = [r for r in rows if r["prompt"].startswith("word")]
    assert len(long_rows) == 10
    assert all(r["endpoint"] == "B" and r["model"] == "m-B" for r in long_rows)
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 80  # every row billed once
    # The 402s are the requests in flight when it retired, in both workers: not one per row.
    assert 1 <= a.no_credits <= 4, a
    assert result.stderr.count("endpoint A retired for the rest of the run: stopped: HTTP 402") == 1


def test_an_endpoint_retired_in_one_worker_is_retired_in_every_worker(
        tmp_path: Path, sim, ray_address) -> None:
    # A answers one 402 and would answer again: only the worker that got it hears it from A.
    # The other stops sending to A at its next lease, so A gets no more than was in flight.
    flaky, fine = sim(latency=0.02), sim(latency=0.02)
    flaky.script(*[Step.ok()] * 10, Step.status(402, "Insufficient credits"))
    src = prompts_csv(tmp_path / "in.csv", 80)
    result = ray_pool(tmp_path, src, ray_address, endpoint("A", flaky, concurrency=4),
                      endpoint("B", fine, concurrency=4))
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" for r in rows)
    assert flaky.stats.requests <= 11 + 4, flaky.stats.requests  # the 402 and those in flight
    assert by_endpoint(rows)["A"] == flaky.stats.ok and fine.stats.ok == 80 - flaky.stats.ok
    billed = [*flaky.stats.billed_by_prompt.values(), *fine.stats.billed_by_prompt.values()]
    assert sorted(billed) == [1] * 80


def test_a_fallback_model_answers_the_long_rows_and_the_journal_is_one(
        tmp_path: Path, sim, ray_address) -> None:
    server = sim(latency=0.005, context_lengths={"small": 60})
    src = write_csv(tmp_path / "in.csv", long_and_short(12, lambda i: i in (2, 5, 7)))
    out = tmp_path / "out.parquet"
    flags = ("--fallback-model", "big", "--max-attempts", 2)
    result = run_job(src, out, server.base_url, *flags, "--engine", "ray", "--workers", 2,
                     "--ray-address", ray_address, model="small", timeout=300)
    assert result.returncode == 0, result.stderr
    for i, row in enumerate(read_output(out)):
        assert row["status"] == "ok"
        assert (row["endpoint"], row["model"], row["attempts"]) == (
            ("big", "big", 2) if i in (2, 5, 7) else ("small", "small", 1))
    assert server.stats.requests == 15 and server.stats.status_counts[400] == 3
    # The local engine, on the same output and endpoints: every row is answered already.
    again = run_job(src, out, server.base_url, *flags, model="small")
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 15
    # An output folder: Ray Data reads the input, each worker renders its block and routes it.
    folder = tmp_path / "folder"
    result = run_job(src, folder, server.base_url, *flags, "--engine", "ray", "--workers", 2,
                     "--ray-address", ray_address, model="small", timeout=300)
    assert result.returncode == 0, result.stderr
    rows = sorted(pq.read_table(folder).to_pylist(), key=lambda r: int(r["prompt"].split()[-1]))
    assert [(r["endpoint"], r["model"]) for r in rows] == [
        ("big", "big") if i in (2, 5, 7) else ("small", "small") for i in range(12)]
    assert server.stats.requests == 30  # its own journal: every row once more, 3 of them twice
    sidecar = pq.read_table(usage_path(folder)).to_pylist()
    assert [(u["endpoint"], u["model"], u["rows_ok"], u["requests"]) for u in sidecar] == [
        ("big", "big", 3, 6), ("small", "small", 9, 9)]


def test_process_routes_a_datasets_rows_among_its_endpoints(sim, ray_address) -> None:
    import ray

    import batchrun.ray

    server = sim(context_lengths={"small": 60})
    ds = ray.data.from_items([{"id": i, "prompt": row["prompt"]} for i, row in enumerate(
        long_and_short(6, lambda i: i in (1, 4)))])
    answered = batchrun.ray.process(ds, base_url=server.base_url, model="small",
                                    fallback_models=["big"], max_attempts=2, workers=1)
    rows = sorted(answered.take_all(), key=lambda r: r["id"])
    assert [(r["status"], r["endpoint"], r["model"]) for r in rows] == [
        ("ok", "big", "big") if i in (1, 4) else ("ok", "small", "small") for i in range(6)]
    assert server.stats.requests == 8
