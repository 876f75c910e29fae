"""Helpers of the Batch API tests: the CLI's batch arguments and quick polls, and the checks
every batch test makes (complete, in order, each prompt billed once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun.sim import SimulatorHandle, expected_answer

from .helpers import clean_env, prompts_csv, read_output, run_cli

# Polls every 50 ms and plain progress lines every 100 ms: a batch test waits on the simulator,
# never on batchrun's backoff.
FAST = {"BATCHRUN_BATCH_POLL": "0.05", "BATCHRUN_PROGRESS_EVERY": "0.1"}


def env() -> dict[str, str]:
    """A CLI call's environment: no keys, quick polls."""
    return clean_env(**FAST)


def batch_args(src: Path, out: Path, base_url: str, *more: Any,
               progress: bool = False) -> tuple[Any, ...]:
    """`batchrun run` over the Batch API of a simulator."""
    return ("run", "--input", src, "--output", out, "--base-url", base_url, "--model", "sim-1",
            "--backend", "batch", *(() if progress else ("--no-progress",)), *more)


def submitted(tmp_path: Path, server: SimulatorHandle, n: int) -> tuple[Path, Path, tuple[Any, ...]]:
    """`n` prompts submitted to the simulator's Batch API with --no-wait (exit 75: the batch is
    live); their input, the output, and the command's arguments for running it again."""
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    args = batch_args(src, out, server.base_url, "--no-wait")
    first = run_cli(*args, env=env())
    assert first.returncode == 75, first.stderr
    return src, out, args


def check_complete(out: Path, n: int, skip: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Every row (but `skip`) ok, in input order, each answer its own prompt's."""
    rows = read_output(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(n)]
    for i, row in enumerate(rows):
        if i in skip:
            continue
        content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
        assert (row["status"], row["response"], row["finish_reason"]) == ("ok", content, finish), row
    return rows


def check_billed_once(server: SimulatorHandle, prompts: list[str]) -> None:
    """Each prompt was billed exactly once by the simulator (online or in a batch)."""
    billed = server.stats.billed_by_prompt
    assert {p: billed.get(p, 0) for p in prompts} == {p: 1 for p in prompts}


def totals(out: Path) -> dict[str, Any]:
    """The `batchrun` metadata of an output: usage totals and cost."""
    import orjson

    return orjson.loads(pq.read_schema(out).metadata[b"batchrun"])


def batch_statuses(server: SimulatorHandle) -> list[str]:
    """The status of every batch the simulator holds, newest first (read over its HTTP API)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{server.base_url}/batches?limit=100", timeout=10) as resp:
        return [batch["status"] for batch in json.load(resp)["data"]]
