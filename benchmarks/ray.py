"""The Ray engine: one limit for the cluster, local vs Ray, and Ray's own start-up apart.

    python benchmarks/ray.py [--rows 6000] [--workers 2] [--only limit|throughput]
                             [--engine local|ray] [--rounds 1] [--cluster] [--against CHECKOUT]

A simulator in this process (its own thread) counts every arrival, refused ones too. The real CLI
runs in a subprocess.

  limit       6,000 rows, --rpm 6000 (the cluster's total), 200 ms latency, the simulator
              enforcing 6,000 RPM over 1-second sliding windows: the request limit binds; ideal
              60 s. Targets (issue 16): 0 failed, <= 1% 429s, wall <= 1.25x ideal, each prompt
              billed once, usage totals exact.
  throughput  the same rows with no limit and no latency: what each engine's overhead costs.

Where Ray runs:
  (default)   each `--engine ray` run starts a local Ray of its own and stops it at its end;
  --cluster   a two-node cluster on this machine (`ray start --head --num-cpus=1` and a second
              `ray start --address=... --num-cpus=1`, tests/ray_cluster.py), started for each
              contender in each round, and the runs join it with --ray-address, as a cluster's
              users run it.

Each run's wall time is split by the simulator's arrivals: `first` (start to the first request:
the interpreter, the plan, joining or starting Ray, Ray Data's actors), `sending` (first to last
request: the pacing, which batchrun owns) and `end` (last request to exit: the journal, the
output, leaving Ray). Ray's own start-up is measured apart, in a bare process each round with the
same `ray.init` arguments as batchrun's (`import` of Ray and Ray Data, `ray.init`,
`ray.shutdown`), and in --cluster mode the cluster's start (both `ray start`s).

--against CHECKOUT runs another checkout's batchrun in the same rounds (its package first on
PYTHONPATH, as throughput.py does; in --cluster mode its cluster's nodes get the same path, so its
actors run its code). These 2 cores cannot show Ray's speed-up (the workers share the cores the
driver and the simulator use); the figures say what the cluster's coordination costs.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/ray_cluster.py: the same two-node cluster as the tests

from batchrun.sim import SimConfig, SimulatorThread  # noqa: E402
from tests.ray_cluster import ray_cluster  # noqa: E402

RPM = 6000
SCENARIOS = {  # name: (simulator settings, extra flags)
    "limit": ({"rpm": RPM, "window_s": 1.0, "latency": 0.2}, ["--rpm", str(RPM)]),
    "throughput": ({}, []),
}
# Ray's start and stop in a bare process, with batchrun's arguments to ray.init.
RAY_ALONE = r"""
import json, sys, time
began = time.monotonic()
import ray, ray.data
imported = time.monotonic()
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, configure_logging=False)
joined = time.monotonic()
ray.shutdown()
print(json.dumps([imported - began, joined - imported, time.monotonic() - joined]))
"""


@dataclass(frozen=True)
class Contender:
    """A batchrun to measure: this checkout, or another one (`--against`)."""

    name: str
    checkout: Path | None = None  # None: this one

    def env(self) -> dict[str, str]:
        """The environment of its runs (and of its cluster's nodes): its package first."""
        if self.checkout is None:
            return dict(os.environ)
        return {**os.environ, "PYTHONPATH": str(self.checkout)}


def contenders(against: Path | None) -> list[Contender]:
    """This checkout, and the one named by --against, each compiled to bytecode first as `pip
    install` does (a checkout run with PYTHONDONTWRITEBYTECODE=1 would compile every run)."""
    found = [Contender("batchrun")]
    if against is not None:
        if not (against / "batchrun" / "__init__.py").exists():
            raise SystemExit(f"--against {against}: no batchrun package there")
        found.append(Contender(against.name or str(against), against))
    for contender in found:
        compileall.compile_dir((contender.checkout or HERE.parent) / "batchrun", quiet=1)
    return found


@dataclass(frozen=True)
class Result:
    """Figures of one run."""

    exit: int
    failed: int
    requests: int
    limited: int
    billed_twice: int  # prompts the simulator billed more than once
    totals_exact: bool  # the output's usage metadata equals what the simulator billed
    wall: float
    first: float  # start to the first request's arrival
    sending: float  # first arrival to last arrival at the simulator
    end: float  # last arrival to exit

    def line(self, name: str, who: str, rows: int, ideal: float | None) -> str:
        share = self.limited / self.requests if self.requests else 0.0
        ratio = f"{self.wall / ideal:>6.3f}" if ideal else "     -"
        met = ""
        if ideal:
            ok = (self.failed == 0 and share <= 0.01 and self.wall <= 1.25 * ideal
                  and self.billed_twice == 0 and self.totals_exact)
            met = "yes" if ok else "NO"
        return (f"{name:<10} {who:<14} {self.exit:>4} {self.failed:>6} {self.requests:>8} "
                f"{self.limited:>5} {100 * share:>5.2f}% {self.billed_twice:>5} "
                f"{'yes' if self.totals_exact else 'NO':>5} {self.wall:>7.2f} "
                f"{rows / self.wall:>7.1f} {ratio} {self.first:>6.2f} {self.sending:>7.2f} "
                f"{self.end:>5.2f}  {met}")


HEADER = (f"{'scenario':<10} {'engine':<14} {'exit':>4} {'failed':>6} {'requests':>8} "
          f"{'429s':>5} {'429 %':>6} {'twice':>5} {'exact':>5} {'wall s':>7} {'rows/s':>7} "
          f"{'/ideal':>6} {'first':>6} {'sending':>7} {'end':>5}  met")


def run(contender: Contender, src: Path, out: Path, scenario: str, flags: list[str]) -> Result:
    """One `batchrun run` of `src` against a fresh simulator for `scenario`, measured."""
    sim, extra = SCENARIOS[scenario]
    with SimulatorThread(SimConfig(**sim)) as server:  # type: ignore[arg-type]
        cmd = [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
               "--base-url", server.base_url, "--model", "sim-1", "--max-tokens", "40",
               "--no-progress", "--fresh", "--concurrency", "64", *extra, *flags]
        start = time.monotonic()
        # The output's folder as working folder: Ray puts a driver's working folder on its
        # workers' path, which must not bring this checkout's package to another's run.
        result = subprocess.run(cmd, capture_output=True, text=True, env=contender.env(),
                                cwd=out.parent)
        stopped = time.monotonic()
        stats = server.stats
        arrivals = sorted(stats.arrivals)
    failed, exact = -1, False
    if out.exists():
        failed = sum(s != "ok" for s in pq.read_table(out, columns=["status"]).column(
            "status").to_pylist())
        meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
        exact = (meta["usage"]["total_tokens"] == stats.billed_total_tokens
                 and meta["usage"]["prompt_tokens"] == stats.billed_prompt_tokens)
    if result.returncode != 0:
        print(f"  stderr: {result.stderr.strip()[-500:]}")
    first, last = (arrivals[0], arrivals[-1]) if arrivals else (stopped, stopped)
    return Result(result.returncode, failed, stats.requests, stats.rate_limited,
                  sum(1 for n in stats.billed_by_prompt.values() if n > 1), exact,
                  stopped - start, first - start, last - first, stopped - last)


def ray_alone(contender: Contender, address: str) -> tuple[float, float, float]:
    """(import, ray.init, ray.shutdown) seconds of Ray alone, in a bare process."""
    result = subprocess.run([sys.executable, "-c", RAY_ALONE, address], capture_output=True,
                            text=True, env=contender.env(), check=True)
    imported, joined, left = json.loads(result.stdout.strip().splitlines()[-1])
    return imported, joined, left


@contextlib.contextmanager
def where_ray_runs(contender: Contender, cluster: bool) -> Iterator[tuple[list[str], str, str]]:
    """(flags for the run, the address for ray.init, a line on the cluster's start)."""
    if not cluster:
        yield [], "local", ""
        return
    began = time.monotonic()
    with ray_cluster(env=contender.env()) as cluster:
        head, second = cluster.started_in
        yield (["--ray-address", cluster.address], cluster.address,
               f"cluster up in {time.monotonic() - began:.2f} s (head {head:.2f} s, second node "
               f"{second:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=list(SCENARIOS))
    parser.add_argument("--engine", choices=["local", "ray"], help="run only this engine")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cluster", action="store_true",
                        help="join a two-node cluster on this machine instead of a local Ray")
    parser.add_argument("--against", type=Path, default=None,
                        help="another batchrun checkout to run on Ray in the same rounds")
    args = parser.parse_args()
    scenarios = [args.only] if args.only else list(SCENARIOS)
    on_ray = contenders(args.against) if args.engine != "local" else []
    local = args.engine != "ray"
    where = "a two-node cluster per contender and round" if args.cluster else "a local Ray per run"
    print(f"{args.rows} rows; Ray: {args.workers} workers, {where}")
    figures: dict[str, list[Result]] = {}
    alone: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_text("prompt\n" + "".join(
            f"Summarize review number {i}: the kettle boils fast but the lid sticks.\n"
            for i in range(args.rows)))
        for round_no in range(1, args.rounds + 1):
            print(f"\nround {round_no}\n{HEADER}", flush=True)
            if local:
                for scenario in scenarios:
                    r = run(Contender("local engine"), src, Path(tmp) / f"{scenario}-local.parquet",
                            scenario, [])
                    _report(figures, scenario, "local engine", r, args.rows)
            for contender in on_ray:
                who = f"ray:{contender.name}"
                with where_ray_runs(contender, args.cluster) as (flags, address, started):
                    if started:
                        print(f"{who}: {started}", flush=True)
                    alone.setdefault(who, []).append(ray_alone(contender, address))
                    for scenario in scenarios:
                        r = run(contender, src, Path(tmp) / f"{scenario}-{round_no}.parquet",
                                scenario, ["--engine", "ray", "--workers", str(args.workers),
                                           *flags])
                        _report(figures, scenario, who, r, args.rows)
    _summary(figures, alone, args.cluster)


def _report(figures: dict[str, list[Result]], scenario: str, who: str, r: Result,
            rows: int) -> None:
    figures.setdefault(f"{scenario} {who}", []).append(r)
    ideal = rows / (RPM / 60) if scenario == "limit" else None
    print(r.line(scenario, who, rows, ideal), flush=True)


def _summary(figures: dict[str, list[Result]], alone: dict[str, list[tuple[float, float, float]]],
             cluster: bool) -> None:
    print("\nmedians over the rounds (seconds)")
    print(f"{'':<26} {'wall':>7} {'first':>6} {'sending':>7} {'end':>5}")
    for name, results in figures.items():
        print(f"{name:<26} " + " ".join(
            f"{statistics.median(getattr(r, field) for r in results):>{width}.2f}"
            for field, width in (("wall", 7), ("first", 6), ("sending", 7), ("end", 5))))
    if alone:
        joined = "join" if cluster else "start"
        print(f"\nRay alone, in a bare process (median): import ray + ray.data, ray.init "
              f"({joined}), ray.shutdown")
        for who, times in alone.items():
            imported, init, left = (statistics.median(t[i] for t in times) for i in range(3))
            print(f"{who:<26} {imported:>6.2f} {init:>6.2f} {left:>6.2f}")


if __name__ == "__main__":
    main()
