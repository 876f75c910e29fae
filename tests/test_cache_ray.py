"""The shared cache on the Ray engine: the driver looks rows up, the ledger keeps what workers send.

On the session's two-node cluster (`ray_address`), joined with --ray-address as a cluster's
users join one; the simulator bills each answer, so "paid once" is read off the server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.sim import expected_answer

from .helpers import prompts_csv, read_output, run_cli, run_job

pytestmark = pytest.mark.ray


def test_the_ray_engine_answers_hits_on_the_driver_and_caches_what_it_sends(
        tmp_path: Path, sim, ray_address: str) -> None:
    server = sim()
    cache = tmp_path / "shared.cache"
    run_job(prompts_csv(tmp_path / "old.csv", 40), tmp_path / "old.parquet", server.base_url,
            "--cache", cache, check=True)  # the local engine fills the cache with 40 answers
    server.reset_stats()
    src = prompts_csv(tmp_path / "in.csv", 100)
    out = tmp_path / "ray.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", "--engine", "ray", "--workers", 2,
                     "--ray-address", ray_address, "--cache", cache, timeout=300)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == 60  # the 40 hits were answered on the driver, never sent
    rows = read_output(out)
    assert sum(r["cached"] for r in rows) == 40
    for row in rows:
        content, _ = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"]) == ("ok", content)
    # What the Ray workers sent is in the cache too: a local run of all 100 pays nothing.
    server.reset_stats()
    run_job(src, tmp_path / "again.parquet", server.base_url, "--cache", cache, check=True)
    assert server.stats.requests == 0
