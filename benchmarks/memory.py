"""Memory: peak RSS of whole batchrun runs at 10,000 and 300,000 rows, Parquet and CSV.

    python benchmarks/memory.py [--million] [--concurrency 64] [--rounds 1] [--against CHECKOUT]

Each run is a fresh `batchrun run` subprocess against a zero-latency simulator in its own process,
with sixty-word prompts; its peak RSS comes from `os.wait4` (the rusage of that child alone). The
Parquet inputs are one row group each, as pandas writes a frame by default, so a reader that takes
a row group whole holds the whole file. Memory should depend on the concurrency and the batch
size, not on the number of rows: issue 27 asks for at most 1.2x from 10k to 300k rows in both
formats, and a million-row single-row-group Parquet (--million) in at most 250 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import PARAGRAPH, Measured, contenders, simulator_process, write_in_child  # noqa: E402

SMALL, LARGE, MILLION = 10_000, 300_000, 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true",
                        help="also run a 1,000,000-row single-row-group Parquet")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each; the lowest peak counts")
    parser.add_argument("--against", type=Path, default=None,
                        help="another batchrun checkout to run in the same rounds (before/after)")
    args = parser.parse_args()
    runs = contenders(args.against)
    cases = [("parquet", SMALL), ("parquet", LARGE), ("csv", SMALL), ("csv", LARGE)]
    if args.million:
        cases.append(("parquet", MILLION))
    peaks: dict[tuple[str, str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as base_url:
        inputs = {}
        for kind, rows in cases:
            inputs[kind, rows] = Path(tmp) / f"in{rows}.{kind}"
            write_in_child(kind, inputs[kind, rows], rows, PARAGRAPH)
        for round_no in range(1, args.rounds + 1):
            for kind, rows in cases:
                for contender in runs:
                    out = Path(tmp) / f"out-{contender.name}-{kind}{rows}-{round_no}.parquet"
                    got: Measured = contender.run(
                        "run", "--input", str(inputs[kind, rows]), "--output", str(out),
                        "--base-url", base_url, "--model", "sim-1", "--concurrency",
                        str(args.concurrency), "--no-progress")
                    key = (contender.name, kind, rows)
                    peaks[key] = min(peaks.get(key, got.peak_mib), got.peak_mib)
                    print(f"round {round_no}: {contender.name:>10} {kind:>7} {rows:>9,} rows: "
                          f"peak RSS {got.peak_mib:6.1f} MiB ({got.wall:6.1f} s, "
                          f"{rows / got.wall:6.0f} rows/s, cpu {got.cpu:6.1f} s)", flush=True)
    print()
    for contender in runs:
        for kind in ("parquet", "csv"):
            small, large = peaks[contender.name, kind, SMALL], peaks[contender.name, kind, LARGE]
            print(f"{contender.name:>10} {kind:>7}: {small:6.1f} MiB at 10k, {large:6.1f} MiB at "
                  f"300k: {large / small:.2f}x  (issue 27: at most 1.2x)")
        if args.million:
            million = peaks[contender.name, "parquet", MILLION]
            print(f"{contender.name:>10} parquet: {million:6.1f} MiB at 1M rows in one row group "
                  "(issue 27: at most 250 MB)")


if __name__ == "__main__":
    main()
