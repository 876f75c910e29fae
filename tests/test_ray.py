"""The Ray engine end to end: the real CLI joining the session's local Ray, against the simulator.

One Ray for the whole session (`ray_address`); inputs stay small so that all Ray tests together
take a minute or two on two shared cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from batchrun.running.output import usage_path
from batchrun.sending.limiter import NOISE

from .helpers import (
    TEST_KEY,
    clean_env,
    journal_count,
    journal_file,
    prompts_csv,
    read_output,
    run_cli,
    wait_until,
)

# Columns that differ between two runs of the same rows by nature (timing, the server's ids).
VARYING = {"latency_ms", "response_id"}


def ray_run(src: Path, out: Path, base_url: str, address: str, *extra: object,
            env: dict[str, str] | None = None):
    result = run_cli("run", "--input", src, "--output", out, "--base-url", base_url,
                     "--model", "sim-1", "--no-progress", "--engine", "ray", "--workers", 2,
                     "--ray-address", address, *extra, env=env, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_a_ray_run_writes_what_the_local_engine_writes(tmp_path: Path, sim, ray_address) -> None:
    server = sim(latency=0.01, api_key=TEST_KEY)  # the key reaches the workers, and no further
    keyed = clean_env(BATCHRUN_API_KEY=TEST_KEY)
    src = prompts_csv(tmp_path / "in.csv", 120)
    local = run_cli("run", "--input", src, "--output", tmp_path / "local.parquet", "--base-url",
                    server.base_url, "--model", "sim-1", "--no-progress", env=keyed)
    assert local.returncode == 0, local.stderr
    result = ray_run(src, tmp_path / "ray.parquet", server.base_url, ray_address, env=keyed)
    assert result.returncode == 0, result.stderr
    assert "120 rows: 120 ok, 0 error" in result.stdout
    assert "120 sent" in result.stdout  # the workers' counters reach the summary
    assert server.stats.requests == 240  # each run sent each row once
    assert TEST_KEY not in result.stdout + result.stderr
    assert TEST_KEY.encode() not in journal_file(tmp_path / "ray.parquet").read_bytes()
    mine, theirs = read_output(tmp_path / "ray.parquet"), read_output(tmp_path / "local.parquet")
    assert [r["id"] for r in mine] == [str(i) for i in range(120)]  # input order
    strip = [{k: v for k, v in r.items() if k not in VARYING} for r in mine]
    assert strip == [{k: v for k, v in r.items() if k not in VARYING} for r in theirs]
    assert pq.read_table(usage_path(tmp_path / "ray.parquet")).to_pylist() == pq.read_table(
        usage_path(tmp_path / "local.parquet")).to_pylist()
    meta = json.loads(pq.read_schema(tmp_path / "ray.parquet").metadata[b"batchrun"])
    assert meta["rows"] == {"total": 120, "ok": 120, "error": 0}
    status = run_cli("status", tmp_path / "ray.parquet")
    assert status.returncode == 0 and "120" in status.stdout
    again = ray_run(src, tmp_path / "ray.parquet", server.base_url, ray_address, env=keyed)
    assert again.returncode == 0, again.stderr  # all answered: Ray is not even joined
    more = prompts_csv(tmp_path / "in.csv", 130)  # ten new rows, finished by the local engine
    local = run_cli("run", "--input", more, "--output", tmp_path / "ray.parquet", "--base-url",
                    server.base_url, "--model", "sim-1", "--no-progress", env=keyed)
    assert local.returncode == 0, local.stderr
    assert server.stats.requests == 250
    assert [r["status"] for r in read_output(tmp_path / "ray.parquet")] == ["ok"] * 130


def test_without_ray_the_engine_is_refused_with_how_to_install_it(tmp_path: Path) -> None:
    hide = tmp_path / "no_ray"
    (hide / "ray").mkdir(parents=True)
    (hide / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("run", "--input", src, "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                     "--engine", "ray", env=clean_env(PYTHONPATH=str(hide)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "batchrun: --engine ray needs Ray: pip install 'batchrun[ray]'"]


def test_a_job_wide_failure_on_a_worker_stops_the_cluster_and_keeps_rows_pending(
        tmp_path: Path, sim, ray_address) -> None:
    server = sim(api_key=TEST_KEY)
    src = prompts_csv(tmp_path / "in.csv", 200)
    out = tmp_path / "out.parquet"
    result = ray_run(src, out, server.base_url, ray_address, "--concurrency", 8,
                     env=clean_env(BATCHRUN_API_KEY="sk-wrong-key-0000"))
    assert result.returncode == 3, result.stderr
    assert "401" in result.stderr + result.stdout
    # What was in flight when the first 401 came back, and what the other worker had started
    # before its next lease told it: at most twice the concurrency, far from the 200 rows.
    assert server.stats.requests <= 16, server.stats.requests
    assert journal_count(out, "1") == 0  # nothing failed for good: a rerun sends every row
    assert not out.exists()


def test_one_limit_for_the_cluster(tmp_path: Path, sim, ray_address) -> None:
    # Two workers under one --rpm, against a server enforcing it over 1-second windows: the
    # cluster keeps to the total, so no more than noise of 429s; each prompt billed once.
    rpm, rows = 6000, 300  # 100 a second: the limit's 3% margin is 3 requests in any second
    server = sim(rpm=rpm, window_s=1.0, latency=0.02)
    src = prompts_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    result = ray_run(src, out, server.base_url, ray_address, "--rpm", rpm)
    assert result.returncode == 0, result.stderr
    stats = server.stats
    # No storm: a limit each worker kept on its own (twice the total) would draw about half the
    # requests refused. At this small scale the leased starts of two workers that Ray starts at
    # different moments still collide now and then: 8-11 of 300 (2.7-3.7%) were seen on two
    # shared cores; at full scale (benchmarks/ray.py, 6,000 rows) it is 0.03%.
    assert stats.rate_limited <= 2.5 * NOISE * rows, stats.rate_limited
    assert stats.ok == rows and set(stats.billed_by_prompt.values()) == {1}
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["total_tokens"] == stats.billed_total_tokens
    assert meta["usage"]["prompt_tokens"] == stats.billed_prompt_tokens


def test_process_sends_only_the_rows_left_after_a_filter(sim, ray_address) -> None:
    import ray

    import batchrun.ray

    server = sim()
    from ray.data.expressions import col

    ds = ray.data.from_items([{"id": i, "lang": "en" if i % 3 == 0 else "fr",
                               "prompt": f"Summarize review number {i}."} for i in range(60)])
    kept = ds.filter(expr=col("lang") == "en")
    answered = batchrun.ray.process(kept, base_url=server.base_url, model="sim-1", workers=2)
    rows = sorted(answered.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(0, 60, 3))
    assert all(r["status"] == "ok" and r["response"] for r in rows)
    assert server.stats.requests == 20
    assert sum(r["total_tokens"] for r in rows) == server.stats.billed_total_tokens
    only_ok = answered.filter(expr=col("status") == "ok")  # composes like any dataset
    assert only_ok.count() == 20
    assert server.stats.requests == 20  # consumed twice, sent once: the answers are journaled


def test_an_output_folder_is_a_parquet_dataset_read_and_written_by_ray(
        tmp_path: Path, sim, ray_address) -> None:
    import pyarrow as pa

    server = sim()
    lake = tmp_path / "lake"
    lake.mkdir()
    for part in range(2):
        ids = list(range(part * 30, part * 30 + 30))
        pq.write_table(pa.table({"id": ids, "prompt": [f"Summarize review number {i}." for i in ids]}),
                       lake / f"part-{part}.parquet")
    out = tmp_path / "answers"
    result = ray_run(lake, out, server.base_url, ray_address)
    assert result.returncode == 0, result.stderr
    assert "60 rows: 60 ok, 0 error" in result.stdout
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == list(range(60))
    assert all(r["status"] == "ok" and r["response"] for r in rows)
    usage = pq.read_table(usage_path(out)).to_pylist()
    assert sum(u["total_tokens"] for u in usage) == server.stats.billed_total_tokens
    assert sum(u["requests"] for u in usage) == server.stats.requests == 60
    again = ray_run(lake, out, server.base_url, ray_address)  # the journal beside the folder
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 60
    assert pq.read_table(out).num_rows == 60


def _ray_processes() -> set[tuple[int, str]]:
    """Every live process run from Ray's package (GCS, raylet, monitor, agents, workers)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "/ray/" in cmd or cmd.startswith("ray::"):
            found.add((int(pid), cmd))
    return found


def test_with_no_address_a_run_starts_its_own_ray_and_leaves_none_of_it(
        tmp_path: Path, sim, ray_address) -> None:
    # A user with no cluster: the run starts a local Ray and stops all of it at its end, the
    # autoscaler monitor it stops early too (without a word on stderr).
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 20)
    before = _ray_processes()  # the session's own Ray
    env = clean_env()
    env.pop("RAY_ADDRESS", None)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url",
                     server.base_url, "--model", "sim-1", "--no-progress", "--engine", "ray",
                     "--workers", 1, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "20 rows: 20 ok, 0 error" in result.stdout
    assert server.stats.requests == 20
    assert "Traceback" not in result.stderr and "autoscaler" not in result.stderr.lower()
    # The raylet's workers may take a moment to go.
    wait_until(lambda: not _ray_processes() - before, timeout=10, interval=0.2)


def test_a_starting_local_ray_is_found_through_the_gcs_node_table(ray_address) -> None:
    # While a run's own Ray starts, ray.init looks its raylet up with tries a second apart; the
    # run reads the GCS's node table every 20 ms first. Against the session's Ray: a live node is
    # found at once, one that never registers is given up on when the wait is over (Ray's own
    # lookup decides then), and Ray's lookup, wrapped, still answers with the node and is Ray's
    # own again afterwards.
    import time

    import ray
    from ray._private import services, state

    from batchrun.ray.backend import _await_node, _prompt_node_lookup

    node = ray.get_runtime_context().get_node_id()
    options = services._get_gcs_client_options(ray_address)
    assert _await_node(state.GlobalState(), options, node, wait=0)
    began = time.monotonic()
    assert not _await_node(state.GlobalState(), options, "ab" * 28, wait=0.3)
    assert time.monotonic() - began >= 0.3
    rays_own = services.get_node
    with _prompt_node_lookup():
        assert services.get_node is not rays_own
        found = services.get_node(ray_address, node)
    assert services.get_node is rays_own
    assert found["node_id"] == node
    assert found == rays_own(ray_address, node)
