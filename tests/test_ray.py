"""The Ray engine end to end: the real CLI joining the session's two-node Ray cluster with
--ray-address, as a cluster's users run it, against the simulator.

One cluster for the whole session (`ray_address`, `tests/ray_cluster.py`): two nodes of one CPU
each on this machine. Inputs stay small so that all Ray tests together take a minute or two on
two shared cores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
    start_cli,
    wait_until,
)
from .ray_cluster import alive_nodes, ray_cluster, run_workers

pytestmark = pytest.mark.ray

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
    # The key reaches the workers, and no further; the usage details come through as locally.
    server = sim(latency=0.01, api_key=TEST_KEY, cached_share=0.5, report_cost=True)
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
    assert all(r["cached_tokens"] == r["prompt_tokens"] // 2 and r["provider_cost"] for r in mine)
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

    server = sim(cached_share=0.5, report_cost=True)
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
    # The provider's usage details, in the rows and the sidecar (the dataset's own columns).
    assert all(r["cached_tokens"] == r["prompt_tokens"] // 2 for r in rows)
    assert sum(u["cached_tokens"] for u in usage) == server.stats.billed_cached_tokens
    assert abs(sum(u["provider_cost"] for u in usage) - server.stats.billed_usd) < 1e-9
    again = ray_run(lake, out, server.base_url, ray_address)  # the journal beside the folder
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 60
    assert pq.read_table(out).num_rows == 60


def test_the_workers_of_a_run_send_from_both_nodes_of_the_cluster(
        tmp_path: Path, sim, ray_address) -> None:
    # Two nodes of one CPU each: Ray Data spreads the run's two sender actors over them, and each
    # leases starts from the one limiter actor (its workers are those that leased).
    server = sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", 200)
    out = tmp_path / "out.parquet"
    proc = start_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", "--engine", "ray", "--workers", 2,
                     "--ray-address", ray_address, "--rpm", 1500, env=clean_env())
    try:
        workers = wait_until(lambda: len(run_workers(proc.pid)) == 2 and run_workers(proc.pid),
                             proc, timeout=120, interval=0.2)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    nodes = alive_nodes()
    assert len(nodes) == 2
    assert {node for _, node in workers.values()} == nodes
    assert [r["status"] for r in read_output(out)] == ["ok"] * 200
    assert server.stats.requests == 200


def test_two_datasets_of_one_driver_have_actors_of_their_own(sim, ray_address) -> None:
    # Each process() call starts its own ledger and limiter actors, named uniquely: two datasets
    # alive in one driver at once (a notebook) both run.
    import ray

    import batchrun.ray
    from batchrun.ray.backend import NAMESPACE

    def limiters() -> set[str]:
        mine = f"batchrun-limiter-{os.getpid()}-"
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE and a["name"].startswith(mine)}

    server = sim()
    before = limiters()
    ds = ray.data.from_items([{"id": i, "prompt": f"Summarize review number {i}."}
                              for i in range(10)])
    plain = batchrun.ray.process(ds, base_url=server.base_url, model="sim-1", workers=1)
    brief = batchrun.ray.process(ds, base_url=server.base_url, model="sim-1", workers=1,
                                 template="In one line: {prompt}")
    assert len(limiters() - before) == 2
    for answered in (plain, brief):
        rows = answered.take_all()
        assert sorted(r["id"] for r in rows) == list(range(10))
        assert all(r["status"] == "ok" and r["response"] for r in rows)
    assert server.stats.requests == 20  # two templates: two different requests per row


def test_a_cluster_with_token_authentication_is_joined_with_its_token_and_refused_without(
        tmp_path: Path, sim) -> None:
    # Ray's own settings, passed on untouched: the driver needs RAY_AUTH_MODE=token and the
    # token (here in a file, RAY_AUTH_TOKEN_PATH); its sender actors are the cluster's and have
    # it. Without them, one line naming what to check, exit 2, nothing sent.
    import secrets

    server = sim()
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    with_token = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    without = {k: v for k, v in clean_env().items() if not k.startswith("RAY_AUTH")}
    src = prompts_csv(tmp_path / "in.csv", 10)
    out = tmp_path / "out.parquet"
    with ray_cluster(nodes=1, env=with_token) as cluster:
        refused = ray_run(src, out, server.base_url, cluster.address, env=without)
        assert refused.returncode == 2, refused.stderr
        [line] = [x for x in refused.stderr.splitlines() if x.startswith("batchrun:")]
        assert f"cannot join the Ray cluster at {cluster.address}" in line
        assert "RAY_AUTH_MODE=token" in line
        assert server.stats.requests == 0
        result = ray_run(src, out, server.base_url, cluster.address, env=with_token)
    assert result.returncode == 0, result.stderr
    assert "10 rows: 10 ok, 0 error" in result.stdout
    assert server.stats.requests == 10


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_address_nothing_listens_on_is_refused_at_once(tmp_path: Path, sim, form: str) -> None:
    # Ray itself retries such an address for minutes before it says so: batchrun tries a TCP
    # connection first (REACH_TIMEOUT), and a refusal is one line, exit 2, nothing sent.
    import socket
    import time

    server = sim()
    with socket.socket() as closed:  # bound, never listening: refused
        closed.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        result = ray_run(prompts_csv(tmp_path / "in.csv", 3), tmp_path / "out.parquet",
                         server.base_url, form.format(where))
        took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"batchrun: cannot join the Ray cluster at {form.format(where)} (no connection to {where}: "
        "Connection refused); check --ray-address or RAY_ADDRESS (and, for a cluster with token "
        "authentication, RAY_AUTH_MODE=token and its token), or leave both unset for a local Ray"]
    assert server.stats.requests == 0
    assert took < 30  # not Ray's minutes of retries


# A notebook's process: Ray's loggers and Ray Data's display as its user has them, then a run
# on the cluster through the Python API, then the same again.
IN_A_NOTEBOOK = r"""
import json, logging, os, sys
import pandas as pd
import ray, ray.data
import batchrun

def state():
    context = ray.data.DataContext.get_current()
    return {"levels": [logging.getLogger(n).level for n in ("ray", "ray.data")],
            "display": [context.enable_progress_bars, context.print_on_execution_start],
            "env": sorted(k for k in os.environ if k.startswith("RAY_"))}

before = state()
frame = batchrun.run_dataframe(pd.DataFrame({"prompt": [f"Summarize review {i}." for i in range(5)]}),
                               base_url=sys.argv[1], model="sim-1", engine="ray", workers=1,
                               ray_address=sys.argv[2], progress=False)
print(json.dumps({"before": before, "after": state(), "ok": int((frame.status == "ok").sum()),
                  "in_ray": ray.is_initialized()}))
"""


def test_a_run_leaves_the_process_as_it_found_it(sim, ray_address) -> None:
    # While it runs, Ray's INFO lines and Ray Data's progress bars are off (batchrun has its own
    # display); after it, this process has Ray's log levels, Ray Data's display settings and
    # environment as they were, and is out of Ray again.
    import subprocess
    import sys

    server = sim()
    result = subprocess.run([sys.executable, "-c", IN_A_NOTEBOOK, server.base_url, ray_address],
                            env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The notebook's own line: Ray may forward a worker's log line to the driver's stdout too.
    line = [x for x in result.stdout.splitlines() if x.startswith('{"before"')]
    assert len(line) == 1, result.stdout
    seen = json.loads(line[0])
    assert seen["ok"] == 5
    assert seen["after"] == seen["before"]
    assert seen["before"]["levels"] != [40, 40]  # Ray's own levels, not ERROR: a real check
    assert not seen["in_ray"]
    assert "Connecting to existing Ray cluster" not in result.stderr  # quiet while it ran


def _ray_processes(marker: str) -> set[tuple[int, str]]:
    """Every live process whose command line names `marker` (a Ray's own temp folder: its GCS,
    raylet, monitor, agents and workers all do)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.add((int(pid), cmd))
    return found


def test_with_no_address_a_run_starts_its_own_ray_and_leaves_none_of_it(
        tmp_path: Path, sim, ray_address) -> None:
    # A user with no cluster: the run starts a local Ray and stops all of it at its end. Ray's
    # temp folder is the run's own (TMPDIR), so its processes are told from other Rays on this
    # shared machine; and in it, the session cluster's address as an earlier `ray start` leaves
    # it: without --ray-address the run still starts a Ray of its own and does not join that one.
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 20)
    own = Path(tempfile.mkdtemp(prefix="brtmp-", dir="/tmp"))  # short: Ray's sockets go under it
    try:
        (own / "ray").mkdir()
        (own / "ray" / "ray_current_cluster").write_text(ray_address)
        env = clean_env(TMPDIR=str(own))
        env.pop("RAY_ADDRESS", None)
        result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                         "--base-url", server.base_url, "--model", "sim-1", "--no-progress",
                         "--engine", "ray", "--workers", 1, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "20 rows: 20 ok, 0 error" in result.stdout
        assert server.stats.requests == 20
        assert "Traceback" not in result.stderr and "autoscaler" not in result.stderr.lower()
        assert len(list((own / "ray").glob("session_2*"))) == 1  # a Ray of its own, started here
        # The raylet's workers may take a moment to go.
        wait_until(lambda: not _ray_processes(str(own)), timeout=10, interval=0.2)
    finally:
        shutil.rmtree(own, ignore_errors=True)
