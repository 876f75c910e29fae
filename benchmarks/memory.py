"""Memory: peak RSS of a batchrun run at 10,000 and 100,000 rows (and optionally 1,000,000).

    python benchmarks/memory.py [--million]

Each run is a fresh `batchrun run` subprocess against a zero-latency simulator in its own process;
its peak RSS comes from `os.wait4` (the rusage of that child alone). Memory should depend on the
concurrency and the batch size, not on the number of rows: issue 5 asks for a 100k/10k ratio of
at most 1.5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REVIEW, simulator_process, write_prompts  # noqa: E402


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.read()[-2000:]!r}")
    return usage.ru_maxrss / 1024.0, elapsed  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also run 1,000,000 rows")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sizes = [10_000, 100_000] + ([1_000_000] if args.million else [])
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as base_url:
        for rows in sizes:
            src = Path(tmp) / f"in{rows}.csv"
            write_prompts(src, rows, REVIEW)
            out = Path(tmp) / f"out{rows}.parquet"
            rss, wall = peak_rss_mib([
                sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
                "--base-url", base_url, "--model", "sim-1", "--concurrency", str(args.concurrency),
                "--no-progress",
            ])
            results[rows] = rss
            print(f"{rows:>9,} rows: peak RSS {rss:7.1f} MiB  ({wall:6.1f} s, "
                  f"{rows / wall:6.0f} rows/s)", flush=True)
    ratio = results[100_000] / results[10_000]
    print(f"\npeak RSS 100k / 10k = {ratio:.2f}x  (issue 5: at most 1.5x)")
    if 1_000_000 in results:
        print(f"peak RSS 1M / 10k = {results[1_000_000] / results[10_000]:.2f}x")


if __name__ == "__main__":
    main()
