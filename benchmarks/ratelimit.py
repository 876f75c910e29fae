"""Rate limits: does a run at a provider's declared limit go exactly that fast, with no 429 storm?

    python benchmarks/ratelimit.py [--rows 3000] [--concurrency 64] [--only NAME]

A simulator in this process (its own thread and event loop) enforces the limits over 1-second
sliding windows, as strictly as a provider can: every arrival counts, refused ones too. The real
CLI runs in a subprocess. Scenarios:

  rpm          6,000 RPM enforced, --rpm 6000: the request limit binds (ideal: rows / 100 per s)
  tpm          a TPM limit that binds at the same ideal time, --tpm set to it
  rpm-2x       6,000 RPM enforced, --rpm 12000 (configured 2x too high): headers teach the limit
  rpm-2x-bare  the same with no rate-limit headers (vLLM, LLMost): only the 429s teach it
  unlimited    6,000 RPM enforced, no --rpm at all, with headers

Targets (issue 8): 0 failed rows, at most 1% of requests answered 429, wall time within 10% of
the ideal. The wall time is the CLI's whole run (start-up, reading, journal, writing) as measured
from outside; the ideal is rows / limit, the time the provider needs to accept them all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from batchrun.sim import SimConfig, SimulatorThread
from batchrun.tokens import count_prompt_tokens

MAX_TOKENS = 40
RPM = 6000


@dataclass(frozen=True)
class Scenario:
    """One benchmark case: what the simulator enforces and what the CLI is told."""

    name: str
    sim: dict[str, object]
    flags: tuple[str, ...]
    ideal: float


def prompts(rows: int) -> list[str]:
    return [f"Summarize review number {i}: the kettle boils fast but the lid sticks." for i in range(rows)]


def reservation(prompt: str) -> int:
    """What one request reserves against TPM, exactly as batchrun and the simulator count it."""
    return count_prompt_tokens([{"role": "user", "content": prompt}]) + MAX_TOKENS


def scenarios(rows: int) -> list[Scenario]:
    ideal = rows / (RPM / 60)
    # A TPM limit that lets exactly `rows` reservations through in `ideal` seconds.
    tpm = int(sum(reservation(p) for p in prompts(rows)) * 60 / ideal)
    base = {"window_s": 1.0, "latency": 0.2}
    return [
        Scenario("rpm", {**base, "rpm": RPM}, ("--rpm", str(RPM)), ideal),
        Scenario("tpm", {**base, "tpm": tpm}, ("--tpm", str(tpm)), ideal),
        Scenario("rpm-2x", {**base, "rpm": RPM}, ("--rpm", str(2 * RPM)), ideal),
        Scenario("rpm-2x-bare", {**base, "rpm": RPM, "rate_limit_headers": False},
                 ("--rpm", str(2 * RPM)), ideal),
        Scenario("unlimited", {**base, "rpm": RPM}, (), ideal),
    ]


def run(scenario: Scenario, rows: int, concurrency: int, workdir: Path) -> Result:
    src = workdir / "in.csv"
    src.write_text("prompt\n" + "\n".join(f'"{p}"' for p in prompts(rows)) + "\n")
    out = workdir / f"{scenario.name}.parquet"
    with SimulatorThread(SimConfig(**scenario.sim)) as sim:  # type: ignore[arg-type]
        cmd = [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
               "--base-url", sim.base_url, "--model", "sim-1", "--max-tokens", str(MAX_TOKENS),
               "--concurrency", str(concurrency), "--no-progress", "--fresh", *scenario.flags]
        start = time.monotonic()  # the simulator's clock (its loop's time) is monotonic too
        result = subprocess.run(cmd, capture_output=True, text=True)
        end = time.monotonic()
        wall = end - start
        stats = sim.stats
        requests, limited = stats.requests, stats.rate_limited
        arrivals = sorted(stats.arrivals)
    failed = rows
    if out.exists():
        table = pq.read_table(out, columns=["status"]).column("status").to_pylist()
        failed = sum(s != "ok" for s in table)
    return Result(
        exit=result.returncode, failed=failed, requests=requests, limited=limited, wall=wall,
        before=arrivals[0] - start if arrivals else 0.0,
        sending=arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0,
        after=end - arrivals[-1] if arrivals else 0.0,
        ideal=scenario.ideal, stderr=result.stderr.strip()[-300:],
    )


@dataclass(frozen=True)
class Result:
    """Figures of one run; `before` + `sending` + `after` = `wall`."""

    exit: int
    failed: int
    requests: int
    limited: int  # requests answered 429
    wall: float
    before: float  # start-up: imports, reading, planning, until the first request arrives
    sending: float  # first arrival to last arrival at the simulator
    after: float  # the last answer, journal, output and summary, until the process exits
    ideal: float
    stderr: str

    @property
    def share_429(self) -> float:
        return self.limited / self.requests if self.requests else 0.0

    @property
    def met(self) -> bool:
        return self.failed == 0 and self.share_429 <= 0.01 and self.wall <= 1.10 * self.ideal


HEADER = (f"{'scenario':<12} {'exit':>4} {'failed':>6} {'requests':>8} {'429s':>5} {'429 %':>6} "
          f"{'wall s':>7} {'= start':>7} {'+ sending':>9} {'+ end':>6} {'ideal s':>7} "
          f"{'wall/ideal':>10} {'sending/ideal':>13}  targets met")


def line(name: str, r: Result) -> str:
    return (f"{name:<12} {r.exit:>4} {r.failed:>6} {r.requests:>8} {r.limited:>5} "
            f"{100 * r.share_429:>5.2f}% {r.wall:>7.2f} {r.before:>7.2f} {r.sending:>9.2f} "
            f"{r.after:>6.2f} {r.ideal:>7.2f} {r.wall / r.ideal:>10.3f} "
            f"{r.sending / r.ideal:>13.3f}  {'yes' if r.met else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", action="append", help="run only these scenarios")
    args = parser.parse_args()
    print(f"{args.rows} rows, --concurrency {args.concurrency}, simulator 1-second windows, "
          "200 ms latency")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios(args.rows):
            if args.only and scenario.name not in args.only:
                continue
            r = run(scenario, args.rows, args.concurrency, Path(tmp))
            print(line(scenario.name, r), flush=True)
            if r.exit != 0:
                print(f"  stderr: {r.stderr}")


if __name__ == "__main__":
    main()
