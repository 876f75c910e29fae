"""Throughput: batchrun against two bare aiohttp loops, same rows, same simulator, alternating.

    python benchmarks/throughput.py [--rows 20000] [--marginal-rows 60000] [--concurrency 64]
                                    [--rounds 3] [--latency S] [--against CHECKOUT]

The contenders, each a fresh process timed from start to exit:

- the plain loop: aiohttp workers on asyncio's loop, orjson for the bodies; it only sends and
  reads (no journal, no limits, no output). batchrun's wall time is compared with it;
- the floor: the same loop on uvloop, the fastest the stack goes; batchrun's CPU is compared
  with it;
- batchrun (reading the CSV, the journal, writing the Parquet output), and with --against another
  checkout of it in the same rounds (`_common.Contender`).

The simulator runs in its own process so that it does not share an interpreter with the client
measured. CPU is each child's own user + system time (its rusage), which other work on the machine
barely moves, while wall time moves with it; the CPU figures are the best of the rounds. Each
round also runs the floor and batchrun on --marginal-rows rows: the CPU the extra rows cost, per
row, is the steady state apart from start-up (imports, reading, writing the output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Measured, contenders, measure, simulator_process, write_prompts  # noqa: E402

LOOP = r'''
import asyncio, csv, sys, aiohttp, orjson

async def main(path, url, concurrency):
    with open(path, newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    answers = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker():
            nonlocal answers
            while not queue.empty():
                p = queue.get_nowait()
                body = orjson.dumps({"model": "sim-1", "messages": [{"role": "user", "content": p}]})
                async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    data = orjson.loads(await r.read())
                    answers += bool(data["choices"][0]["message"]["content"])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert answers == len(prompts), answers

work = main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
if sys.argv[4] == "uvloop":
    import uvloop
    uvloop.run(work)
else:
    asyncio.run(work)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--marginal-rows", type=int, default=60_000,
                        help="a second, larger input for the CPU per extra row (0: skip it)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="simulator seconds per answer (0.04 at concurrency 64 is the ~1,600 "
                             "requests/s of the issue's reference server)")
    parser.add_argument("--against", type=Path, default=None,
                        help="another batchrun checkout to time in the same rounds (before/after)")
    args = parser.parse_args()
    runs = contenders(args.against)
    sizes = [args.rows] + ([args.marginal_rows] if args.marginal_rows > args.rows else [])
    sim_flags = ("--latency", str(args.latency)) if args.latency else ()
    # measured[name][rows]: one Measured per round
    measured: dict[str, dict[int, list[Measured]]] = {}
    with tempfile.TemporaryDirectory() as tmp, simulator_process(*sim_flags) as base_url:
        inputs = {}
        for rows in sizes:
            inputs[rows] = Path(tmp) / f"in{rows}.csv"
            write_prompts(inputs[rows], rows)

        def loop(kind: str, rows: int) -> Measured:
            return measure([sys.executable, "-c", LOOP, str(inputs[rows]),
                            base_url + "/chat/completions", str(args.concurrency), kind])

        def batchrun(contender_index: int, rows: int, round_no: int) -> Measured:
            contender = runs[contender_index]
            out = Path(tmp) / f"out-{contender_index}-{rows}-{round_no}.parquet"
            return contender.run("run", "--input", str(inputs[rows]), "--output", str(out),
                                 "--base-url", base_url, "--model", "sim-1", "--concurrency",
                                 str(args.concurrency), "--no-progress")

        for round_no in range(1, args.rounds + 1):
            line = []
            for rows in sizes:
                kinds = ["plain", "floor"] if rows == args.rows else ["floor"]
                for kind in kinds:
                    got = loop("uvloop" if kind == "floor" else "asyncio", rows)
                    measured.setdefault(kind, {}).setdefault(rows, []).append(got)
                    line.append(f"{kind} {rows // 1000}k {got.wall:5.2f} s/{got.cpu:5.2f} cpu")
                for i, contender in enumerate(runs):
                    got = batchrun(i, rows, round_no)
                    measured.setdefault(contender.name, {}).setdefault(rows, []).append(got)
                    line.append(f"{contender.name} {rows // 1000}k {got.wall:5.2f} s/"
                                f"{got.cpu:5.2f} cpu")
            print(f"round {round_no}: " + "   ".join(line), flush=True)
    _report(args, runs[0].name, [c.name for c in runs[1:]], sizes, measured)


def _report(args: argparse.Namespace, ours: str, others: list[str], sizes: list[int],
            measured: dict[str, dict[int, list[Measured]]]) -> None:
    rows = args.rows
    print(f"\n{rows:,} rows, concurrency {args.concurrency}, {os.cpu_count()} cores, simulator "
          f"latency {args.latency:g} s, {args.rounds} rounds; CPU: best of the rounds")

    def walls(name: str) -> list[float]:
        return [m.wall for m in measured[name][rows]]

    plain = walls("plain")
    for name in (ours, *others):
        ratios = sorted(o / p for o, p in zip(walls(name), plain, strict=True))
        print(f"wall, {name} / plain loop   : median {statistics.median(ratios):.2f}x, range "
              f"{ratios[0]:.2f}x-{ratios[-1]:.2f}x (median {statistics.median(walls(name)):.2f} s "
              f"against {statistics.median(plain):.2f} s)")

    def per_row(name: str) -> float:
        return min(m.cpu for m in measured[name][rows]) / rows * 1e6

    floor = per_row("floor")
    print(f"CPU per row, whole run    : plain loop {per_row('plain'):.0f} us, floor (uvloop + "
          f"orjson) {floor:.0f} us, " + ", ".join(
              f"{name} {per_row(name):.0f} us ({per_row(name) / floor:.2f}x the floor)"
              for name in (ours, *others)))
    if len(sizes) == 2:
        big = sizes[1]

        def marginal(name: str) -> float:
            extra = min(m.cpu for m in measured[name][big]) - min(m.cpu for m in measured[name][rows])
            return extra / (big - rows) * 1e6

        floor_m = marginal("floor")
        print(f"CPU per row, marginal     : ({big:,} rows against {rows:,}) floor {floor_m:.0f} us, "
              + ", ".join(f"{name} {marginal(name):.0f} us ({marginal(name) / floor_m:.2f}x the "
                          "floor)" for name in (ours, *others)))


if __name__ == "__main__":
    main()
