"""`--backend batch` and the simulator: its in-process server ends with the run, so a batch there
could never be collected; it is refused (exit 2, nothing submitted), and a `batchrun simulate`
server named by --base-url serves a batch that ends."""

from __future__ import annotations

from pathlib import Path

from .batch_support import batch_statuses, env
from .helpers import prompts_csv, refused, run_cli, wait_until

REPO = Path(__file__).resolve().parent.parent


def test_batch_with_the_in_process_simulator_is_refused_every_time(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.parquet"
    for _ in range(2):  # the next run is refused the same way: nothing was left to wait on
        result = run_cli("run", "--input", src, "--output", out, "--provider", "simulator",
                         "--backend", "batch", "--no-wait", "--no-progress", env=env())
        refused(result, "--backend batch", "batchrun simulate", "--base-url", "--backend online")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no journal: nothing submitted


def test_the_demo_job_as_a_batch_is_refused_and_points_at_batchrun_simulate(
        tmp_path: Path) -> None:
    out = tmp_path / "demo-batch.parquet"
    result = run_cli("run", REPO / "jobs" / "demo.toml", "--output", out, "--backend", "batch",
                     "--no-wait", "--no-progress", env=env())
    refused(result, "batchrun simulate", "--base-url")
    assert not list(tmp_path.iterdir())


def test_the_simulator_preset_with_a_base_url_runs_a_batch_to_its_end(tmp_path: Path, sim) -> None:
    server = sim(batch_duration_s=0.3)
    src = prompts_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--provider", "simulator", "--base-url",
            server.base_url, "--backend", "batch", "--no-wait", "--no-progress")
    first = run_cli(*args, env=env())
    assert first.returncode == 75, first.stderr  # submitted; the server outlives the run
    wait_until(lambda: batch_statuses(server) == ["completed"], timeout=30)
    second = run_cli(*args, env=env())
    assert second.returncode == 0, second.stderr  # collected: it ends
    assert server.stats.batches_created == 1 and server.stats.batch_lines_billed == 5
