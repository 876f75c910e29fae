"""The shortest end-to-end check: the CLI answers every row against a simulator on loopback, run as
users run it (`python -m batchrun` in a process of its own, leaving through console's os._exit)."""

from __future__ import annotations

from pathlib import Path

from batchrun.sim import expected_answer

from .helpers import prompts_csv, read_output, run_cli


def test_every_row_answered_with_its_own_answer(tmp_path: Path, sim) -> None:
    server = sim(latency=0.005)
    src = prompts_csv(tmp_path / "in.csv", 50)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", subprocess=True)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(50)]
    for row in rows:
        content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["response"], row["finish_reason"], row["status"]) == (content, finish, "ok")
    assert server.stats.ok == 50
