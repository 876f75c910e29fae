"""The shared cache: what a cold cache costs a run, and how much faster a warm one answers.

    python benchmarks/cache.py [--rows 20000] [--concurrency 64] [--rounds 3]

Against a zero-latency simulator in its own process, each round runs three fresh `batchrun run`
subprocesses on the same input, one after the other:

    provider  no --cache: every row is sent (the reference of the round)
    cold      --cache with a new, empty cache file: every row is looked up, missed, sent and stored
    warm      --cache with the file the cold run filled, to a new output: every row is a hit

and prints each one's wall time and CPU (user + system, the client's process alone), then
cold/provider (what looking up and storing cost: the target is at most 1.05x) and
provider/warm (how much faster a warm cache answers than the provider path: at least 5x).
The rounds alternate the contenders, and the best round of each is what the ratios use.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import simulator_process, write_prompts  # noqa: E402


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `batchrun` subprocess, which must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batchrun", *args], capture_output=True,
                          text=True, env={**os.environ, "BATCHRUN_API_KEY": "sk-bench"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"batchrun {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"provider": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="batchrun-cache-bench-") as tmp, \
            simulator_process() as base_url:
        work = Path(tmp)
        src = work / "in.csv"
        write_prompts(src, opts.rows)
        common = ["--input", str(src), "--base-url", base_url, "--model", "sim-1",
                  "--concurrency", str(opts.concurrency), "--no-progress", "--fresh"]
        for r in range(opts.rounds):
            cache = work / f"round{r}.cache"
            order = ("provider", "cold", "warm") if r % 2 == 0 else ("cold", "warm", "provider")
            for name in order:
                extra = [] if name == "provider" else ["--cache", str(cache)]
                out = work / f"{name}-{r}.parquet"
                results[name].append(timed(["run", *common, "--output", str(out), *extra]))
            print(f"round {r + 1}: " + ", ".join(
                f"{name} {results[name][-1][0]:.2f} s ({results[name][-1][1]:.2f} s CPU)"
                for name in ("provider", "cold", "warm")), flush=True)
    best = {name: min(runs) for name, runs in results.items()}
    wall = {name: best[name][0] for name in best}
    cpu = {name: min(c for _, c in runs) for name, runs in results.items()}
    print(f"\n{opts.rows:,} rows, concurrency {opts.concurrency}, best of {opts.rounds}:")
    for name in ("provider", "cold", "warm"):
        median = statistics.median(w for w, _ in results[name])
        print(f"  {name:<9} {wall[name]:6.2f} s wall (median {median:.2f} s), "
              f"{cpu[name]:6.2f} s CPU, {opts.rows / wall[name]:8,.0f} rows/s")
    print(f"  cold cache against no cache: {wall['cold'] / wall['provider']:.3f}x wall, "
          f"{cpu['cold'] / cpu['provider']:.3f}x CPU (target: at most 1.05x)")
    print(f"  warm cache against the provider path: {wall['provider'] / wall['warm']:.1f}x "
          "faster (target: at least 5x)")


if __name__ == "__main__":
    main()
