"""Resume: how soon a 99%-done 100,000-row job starts sending again, and how fast the journal commits.

    python benchmarks/resume.py [--rows 100000] [--rounds 2] [--answers 50000] [--journal-only]

(a) Builds a real journal by running the CLI to completion against `batchrun simulate` (its own
    process, zero latency), then deletes the results of 1% of the rows from the journal with
    sqlite3 (every 100th row; then the last 1%, as after a crash at 99%), and times the resumed
    CLI from process start to the first request arriving at the simulator (its arrival clock is
    CLOCK_MONOTONIC, shared with this process) and to exit. `--rounds` times each.
(b) Journal throughput, no network: `Journal.record` + `flush` in batches, and the engine's own
    pattern (`GroupCommit`: 64 workers each awaiting the commit of its answer before the next).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import simulator_process, write_prompts  # noqa: E402

from batchrun.journal.database import GroupCommit, Journal, journal_path  # noqa: E402
from batchrun.protocol.outcome import OK, Outcome  # noqa: E402


def sim_get(base_url: str, path: str, post: bool = False) -> dict:
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(root + path, data=b"" if post else None,
                                     method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return orjson.loads(reply.read())


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "batchrun", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"batchrun failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result


SCENARIOS = {
    # 1% scattered through the input (rows 7, 107, 207, ...): a resume finds work at once.
    "scattered": "idx % 100 = 7",
    # The last 1% (a crash at 99%): the resume must skip 99,000 answered rows before sending.
    "tail": "idx >= (SELECT COUNT(*) FROM rows) * 99 / 100",
}


def forget(out: Path, where: str) -> int:
    """Delete from the journal the results of the rows matching `where`; returns how many.

    A run that began with an empty journal leaves its results in `log` (the next run folds them
    into `results`), a resumed one in `results`: both are cleared.
    """
    db = sqlite3.connect(journal_path(out))
    with db:
        deleted = sum(db.execute(
            f"DELETE FROM {table} WHERE key IN (SELECT key FROM rows WHERE {where})"
        ).rowcount for table in ("results", "log"))
    db.close()
    return deleted


def bench_resume(rows: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as base_url:
        src, out = Path(tmp) / "in.csv", Path(tmp) / "out.parquet"
        write_prompts(src, rows)
        args = ["run", "--input", str(src), "--output", str(out), "--base-url", base_url,
                "--model", "sim-1", "--concurrency", "64", "--no-progress"]
        start = time.perf_counter()
        run_cli(args)
        fill = time.perf_counter() - start
        size = journal_path(out).stat().st_size
        print(f"(a) resume of a {rows:,}-row job, 99% done")
        print(f"    journal built by the real CLI in {fill:.1f} s ({rows / fill:,.0f} rows/s), "
              f"{size / 1e6:.1f} MB")
        startup = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "batchrun", "--version"], capture_output=True,
                           check=True)
            startup.append(time.perf_counter() - t0)
        print(f"    interpreter start + `batchrun --version`: {statistics.median(startup):.2f} s")
        for scenario, where in SCENARIOS.items():
            resume_rounds(args, base_url, out, scenario, where, rounds)


def resume_rounds(args: list[str], base_url: str, out: Path, scenario: str, where: str,
                  rounds: int) -> None:
    first, total = [], []
    for round_no in range(1, rounds + 1):
        left = forget(out, where)
        sim_get(base_url, "/_reset", post=True)
        t0 = time.monotonic()
        result = run_cli(args)
        t_end = time.monotonic()
        stats = sim_get(base_url, "/_stats")
        if stats["requests"] != left:
            raise SystemExit(f"resume sent {stats['requests']} requests, expected {left}")
        first.append(min(stats["arrivals"]) - t0)
        total.append(t_end - t0)
        print(f"    {scenario} round {round_no}: {left:,} rows left: first request after "
              f"{first[-1]:.2f} s, done (output written) after {total[-1]:.2f} s; "
              f"sent exactly {stats['requests']:,}", flush=True)
        assert "ok" in result.stdout
    print(f"    {scenario} median: first request {statistics.median(first):.2f} s after process "
          f"start (target: a few seconds); whole resume {statistics.median(total):.2f} s")


def _outcome(i: int) -> Outcome:
    return Outcome(
        key=i.to_bytes(16, "big"), status=OK,
        response="[5e2f0c1a9b3d] Amber river quiet meadow copper lantern summer willow. " * 3,
        finish_reason="stop", prompt_tokens=21, completion_tokens=33, total_tokens=54,
        attempts=1, latency_ms=812.5, model="sim-1", response_id=f"chatcmpl-{i}",
        cost_usd=0.0000231, finished_at=time.time(),
    )


def bench_batched(path: Path, answers: int, batch: int) -> float:
    journal = Journal(path)
    start = time.perf_counter()
    for i in range(answers):
        journal.record(_outcome(i))
        if (i + 1) % batch == 0:
            journal.flush()
    journal.flush()
    elapsed = time.perf_counter() - start
    journal.close()
    return answers / elapsed


def bench_group_commit(path: Path, answers: int, workers: int) -> tuple[float, float]:
    """The engine's pattern: each worker awaits its answer's commit before taking the next."""
    journal = Journal(path)
    commits = [0]

    async def main() -> float:
        group = GroupCommit(journal, 0.1, lambda n: commits.__setitem__(0, commits[0] + 1))
        flusher = asyncio.create_task(group.run())
        counter = iter(range(answers))

        async def worker() -> None:
            for i in counter:
                await asyncio.sleep(0)  # stands in for the network wait between answers
                await group.commit(_outcome(i))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        group.flush()
        return elapsed

    elapsed = asyncio.run(main())
    journal.close()
    count = sqlite3.connect(path).execute("SELECT COUNT(*) FROM all_results").fetchone()[0]
    assert count == answers, count
    return answers / elapsed, answers / commits[0]


def bench_journal(answers: int) -> None:
    print(f"\n(b) journal throughput ({answers:,} answers, WAL, synchronous=NORMAL)")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 16, 100):
            rate = bench_batched(Path(tmp) / f"b{batch}.sqlite", answers if batch > 1 else 5000,
                                 batch)
            print(f"    record + flush every {batch:>3} answers: {rate:10,.0f} answers/s")
        rate, per_commit = bench_group_commit(Path(tmp) / "g.sqlite", answers, 64)
        print(f"    GroupCommit, 64 workers (engine)   : {rate:10,.0f} answers/s "
              f"({per_commit:.1f} answers per transaction)   target >= 2,000/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--answers", type=int, default=50_000)
    parser.add_argument("--journal-only", action="store_true")
    args = parser.parse_args()
    if not args.journal_only:
        bench_resume(args.rows, args.rounds)
    bench_journal(args.answers)


if __name__ == "__main__":
    main()
