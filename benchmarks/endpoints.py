"""Several endpoints: does a pool of two keys go at the sum of their limits, split by their pace?

    python benchmarks/endpoints.py [--rows 1800] [--concurrency 16]

Issue 28's figure. A simulator in this process (its own thread and event loop) accepts two keys,
each with a limit of its own enforced over 1-second sliding windows (as strictly as a provider
can: every arrival counts, refused ones too), 200 ms per answer:

    A   3,000 RPM   key in BENCH_KEY_A
    B   1,500 RPM   key in BENCH_KEY_B

The real CLI runs in a subprocess with a job file listing both as `[[endpoints]]` (rpm as each
key's limit). The ideal is the rows at their summed limit (1,800 rows at 4,500 RPM: 24 s); the
wall time is the CLI's whole run (start-up, reading, journal, writing) as measured from outside.
Targets: every row ok, wall <= 1.15x the ideal, <= 1% of requests answered 429, and rows split
about 2:1 (A's share within 0.60-0.73). Also checked: each prompt billed once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import REVIEW, write_prompts  # noqa: E402

from batchrun.sim import SimConfig  # noqa: E402
from batchrun.sim.config import Account  # noqa: E402
from batchrun.sim.harness import SimulatorThread  # noqa: E402

KEYS = {"A": ("BENCH_KEY_A", "sk-bench-a", 3000), "B": ("BENCH_KEY_B", "sk-bench-b", 1500)}
MAX_RATIO = 1.15
MAX_429 = 0.01
SHARE_A = (0.60, 0.73)  # A's share of the rows: 2/3 at their paces


def job_file(path: Path, base_url: str, src: Path, out: Path, concurrency: int) -> None:
    """The run's job: both endpoints on the simulator, each with its key and its limit."""
    tables = "".join(
        f'\n[[endpoints]]\nname = "{name}"\nbase_url = "{base_url}"\nmodel = "sim-{name}"\n'
        f'api_key_env = "{env}"\nrpm = {rpm}\nconcurrency = {concurrency}\n'
        for name, (env, _, rpm) in KEYS.items())
    path.write_text(f'[input]\npath = "{src}"\n\n[output]\npath = "{out}"\n{tables}',
                    encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1800)
    parser.add_argument("--concurrency", type=int, default=16)
    opts = parser.parse_args()
    import subprocess

    import pyarrow.parquet as pq

    accounts = tuple(Account(key, rpm=rpm) for _, key, rpm in KEYS.values())
    config = SimConfig(window_s=1.0, latency=0.2, accounts=accounts)
    ideal = opts.rows / (sum(rpm for _, _, rpm in KEYS.values()) / 60)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="batchrun-endpoints-bench-") as tmp, \
            SimulatorThread(config) as server:
        work = Path(tmp)
        src, out, job = work / "in.csv", work / "out.parquet", work / "job.toml"
        write_prompts(src, opts.rows, REVIEW)
        job_file(job, server.base_url, src, out, opts.concurrency)
        env = {**os.environ, **{env: key for env, key, _ in KEYS.values()}}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "batchrun", "run", str(job), "--no-progress"],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"batchrun exited {done.returncode}:\n{done.stderr}")
        table = pq.read_table(out, columns=["status", "endpoint"]).to_pylist()
        stats = server.stats
        billed_once = all(n == 1 for n in stats.billed_by_prompt.values()) and (
            len(stats.billed_by_prompt) == opts.rows)
    split = Counter(row["endpoint"] for row in table)
    failed = sum(row["status"] != "ok" for row in table)
    share_a = split["A"] / opts.rows
    share_429 = stats.rate_limited / stats.requests if stats.requests else 0.0
    ratio = wall / ideal
    print(f"rows {opts.rows}, concurrency {opts.concurrency} per endpoint; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"wall {wall:.2f} s, ideal {ideal:.2f} s: {ratio:.3f}x (target <= {MAX_RATIO}x)")
    print(f"requests {stats.requests}, 429s {stats.rate_limited}: {share_429:.2%} "
          f"(target <= {MAX_429:.0%})")
    print(f"split A {split['A']} / B {split['B']}: A's share {share_a:.3f} "
          f"({split['A'] / max(split['B'], 1):.2f}:1; target {SHARE_A[0]}-{SHARE_A[1]})")
    print(f"failed rows {failed}; each prompt billed once: {billed_once}")
    met = (failed == 0 and ratio <= MAX_RATIO and share_429 <= MAX_429 and billed_once
           and SHARE_A[0] <= share_a <= SHARE_A[1])
    print("targets met" if met else "TARGETS NOT MET")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
