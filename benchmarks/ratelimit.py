"""Rate limits: does a run at a provider's limits go that fast, with no 429 storm, as providers behave?

    python benchmarks/ratelimit.py [--rows 3000] [--concurrency 64] [--only NAME ...]
                                   [--matrix-rows 400] [--against CHECKOUT]

A simulator in this process (its own thread and event loop) enforces the limits as strictly as a
provider can: every arrival counts, refused ones too. The real CLI runs in a subprocess. The wall
time is the CLI's whole run (start-up, reading, journal, writing) as measured from outside.
`--only` takes scenario names, their groups (`stray`, `matrix`) or patterns (`matrix/sliding-*`).
`--against` runs each scenario a second time, right after, with batchrun from another checkout
(say the previous main): before and after in the same rounds, on the same machine.
Scenarios, each with its targets:

  limits (6,000 RPM, 1-second sliding windows, 200 ms latency; ideal: rows / 100 per s; 0 failed,
  <= 1% 429s, <= 1.10x):
    rpm          --rpm 6000: the request limit binds
    tpm          a TPM limit that binds at the same ideal time, --tpm set to it
    rpm-2x       --rpm 12000 (configured 2x too high): headers teach the limit
    rpm-2x-bare  the same with no rate-limit headers (vLLM, LLMost): only the 429s teach it
    unlimited    no --rpm at all, with headers
  tokenizer-0.5, tokenizer-2 (TPM-bound, 60,000 TPM, --tpm 60000, --max-tokens 5): the server
    counts prompt tokens as 0.5x and 2x our estimate (14-15 tokens, rounded); the ideal is what
    its own count allows. 0 failed, <= 2% 429s, <= 1.1x the ideal. The requests are small
    against a second's allowance (1,000 tokens), as in a real run: one of a sixth of it would
    leave a 1-second window room for 6 where the pace allows 6.06, whatever the client knows
    of the tokenizer.
  stray (3,000 rows, no limit, 30 ms): 2% of requests answered 429 at any pace (retry-after 1, no
    headers); the wall is within 1.5x of the same run without them, measured here too (the
    median over 5 seeds of the simulator's dice). The issue names no concurrency: `stray` runs
    at the CLI's default (16), as a new user's run does; `stray-64` at --concurrency. The floor
    is the retry-after itself: a row refused in the last second makes the run 1 s longer, one
    refused twice 2 s. At 64 the run without them sends for 1.7 s, so that floor alone is
    1.4-1.8x of it whatever the client does; at 16 it sends for ~6 s.
  soak (2,000 rows, --concurrency 64, no limit, 30 ms): 5% 5xx, 2% dropped connections, 1% garbage,
    1% hangs cut by --timeout 3, 1% stray 429s: every row ok, each prompt billed once, usage
    exact, in <= 20 s.
  matrix (issue 26: a strict provider that is not tuned to us): 400 rows of 40 words, --tpm 60000
    --max-tokens 64 --concurrency 32, 200 ms latency (+-50 ms), every request charged its prompt
    as the provider's tokenizer counts it plus max_tokens. Each cell is a limit shape x a
    tokenizer x headers or none:
      sliding   1-second sliding windows (a per-minute limit enforced per second): a request
                is 8-18% of a window's 1,000 tokens
      fixed     back-to-back 10-second windows
      bucket    a bucket of one second's allowance, refilled continuously
      0.5 ... 3 the provider's tokens per word (ours: about 1.5): its count of a request is
                84-184 tokens
      headers   with `x-ratelimit-*` headers, or `bare` without
    The ideal is what the server's own count allows at its steady best: whole requests per
    window (`k` = the requests of the server's size that fit in one window's allowance; a
    window's leftover is no use to anyone) for the windows, the refill for the bucket. The
    start-up burst a window or bucket would also let through is left out (batchrun declines it by
    design: it is what strict providers punish). `nominal` is the limit's own rate, for scale: in
    the sliding cells no client can come nearer it than the share `k` whole requests fill.
    Targets: <= 1% 429s, <= 1.10x the ideal; the 429s before the first calibration ("cold":
    arrivals before the first answer left the server, or within a second after) <= 8.

`send/ideal` is the time from the first arrival to the last against the ideal: the pace alone,
without the CLI's start-up and last answer (on a busy machine the start-up alone can take 1-4 s).
"""

from __future__ import annotations

import argparse
import compileall
import fnmatch
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import SimConfig, SimulatorThread
from batchrun.sim.validate import provider_tokens

MAX_TOKENS = 40
RPM = 6000
TOKENIZER_TPM = 60_000
TOKENIZER_MAX_TOKENS = 5
STRAY_SEEDS = 5
# The matrix (issue 26).
MATRIX_TPM = 60_000
MATRIX_MAX_TOKENS = 64
MATRIX_CONCURRENCY = 32
# 40 words; the row number has three digits, so that every row is the same size.
FORTY_WORDS = ("Summarize review {i:03d}: The kettle arrived quickly, boils fast, and the handle "
               "stays cool; the lid is a bit stiff and the cord is short, but for the price it does "
               "exactly what I wanted. Two sentences at most, please.")
SHAPES = {"sliding": 1.0, "fixed": 10.0, "bucket": 1.0}  # each shape's window_s
TOKENS_PER_WORD = (0.5, 0.6, 1.0, 2.5, 3.0)
COLD = 1.0  # seconds after the first answer that still count as before the first calibration


@dataclass(frozen=True)
class Scenario:
    """One benchmark case: what the simulator enforces, what the CLI is told, and the targets."""

    name: str
    sim: dict[str, object]
    flags: tuple[str, ...]
    rows: int
    ideal: float | None  # seconds the provider needs to accept every row; None: no limit
    max_429: float = 0.01  # the largest share of requests answered 429
    max_ratio: float = 1.10  # the longest wall time, as a multiple of the ideal
    text: str = "Summarize review number {i}: the kettle boils fast but the lid sticks."
    max_tokens: int = MAX_TOKENS
    max_wall: float | None = None  # seconds, for a run with no ideal
    default_concurrency: bool = False  # run at the CLI's own default, not the benchmark's
    concurrency: int | None = None  # this concurrency whatever --concurrency says
    nominal: float | None = None  # seconds at the limit's own rate (the matrix, for scale)
    max_cold: int | None = None  # the most 429s before the first calibration


def prompts(scenario: Scenario) -> list[str]:
    return [scenario.text.format(i=i) for i in range(scenario.rows)]


def reservation(prompt: str, max_tokens: int = MAX_TOKENS, ratio: float = 1.0) -> int:
    """What one request reserves against TPM as the server counts it: its tokenizer's count of
    the prompt (ratio x our estimate, rounded as the simulator rounds it) plus max_tokens."""
    ours = count_prompt_tokens([{"role": "user", "content": prompt}])
    return provider_tokens(ours, ratio) + max_tokens


SHORT = "Summarize review number {i}."


def tokenizer(ratio: float, rows: int) -> Scenario:
    """TPM-bound at 60,000 TPM, the server counting prompt tokens as `ratio` x our estimate."""
    base = Scenario(f"tokenizer-{ratio:g}", {}, (), rows, None, text=SHORT,
                    max_tokens=TOKENIZER_MAX_TOKENS)
    ideal = sum(reservation(p, TOKENIZER_MAX_TOKENS, ratio) for p in prompts(base)) * 60 / TOKENIZER_TPM
    return Scenario(
        base.name, {"window_s": 1.0, "latency": 0.2, "tpm": TOKENIZER_TPM, "tokenizer_ratio": ratio},
        ("--tpm", str(TOKENIZER_TPM)), rows, ideal, max_429=0.02, text=SHORT,
        max_tokens=TOKENIZER_MAX_TOKENS,
    )


def cell(shape: str, per_word: float, headers: bool, rows: int) -> Scenario:
    """One cell of the matrix: a limit shape, the provider's tokens per word, headers or none."""
    window = SHAPES[shape]
    sample = FORTY_WORDS.format(i=0)
    ours = count_prompt_tokens([{"role": "user", "content": sample}])
    ratio = per_word * len(sample.split()) / ours  # the provider's count against our estimate
    size = reservation(sample, MATRIX_MAX_TOKENS, ratio)  # every row's, by the server's count
    allowance = MATRIX_TPM * window / 60  # tokens in one window (the bucket: what it holds)
    nominal = rows * size * 60 / MATRIX_TPM
    ideal = nominal if shape == "bucket" else rows * window / math.floor(allowance / size)
    return Scenario(
        f"matrix/{shape}-{per_word:g}-{'headers' if headers else 'bare'}",
        {"limit_shape": shape, "window_s": window, "tpm": MATRIX_TPM, "tokenizer_ratio": ratio,
         "latency": 0.2, "latency_jitter": 0.05, "rate_limit_headers": headers},
        ("--tpm", str(MATRIX_TPM)), rows, ideal, text=FORTY_WORDS, max_tokens=MATRIX_MAX_TOKENS,
        concurrency=MATRIX_CONCURRENCY, nominal=nominal, max_cold=8,
    )


def scenarios(rows: int, matrix_rows: int) -> list[Scenario]:
    ideal = rows / (RPM / 60)
    # A TPM limit that lets exactly `rows` reservations through in `ideal` seconds.
    tpm = int(sum(reservation(p) for p in prompts(Scenario("", {}, (), rows, ideal))) * 60 / ideal)
    base = {"window_s": 1.0, "latency": 0.2}
    fast = {"latency": 0.03}
    return [
        Scenario("rpm", {**base, "rpm": RPM}, ("--rpm", str(RPM)), rows, ideal),
        Scenario("tpm", {**base, "tpm": tpm}, ("--tpm", str(tpm)), rows, ideal),
        Scenario("rpm-2x", {**base, "rpm": RPM}, ("--rpm", str(2 * RPM)), rows, ideal),
        Scenario("rpm-2x-bare", {**base, "rpm": RPM, "rate_limit_headers": False},
                 ("--rpm", str(2 * RPM)), rows, ideal),
        Scenario("unlimited", {**base, "rpm": RPM}, (), rows, ideal),
        # Both take ~25 s at the server's own count (12-13 and 33 tokens a request).
        tokenizer(0.5, 2000),
        tokenizer(2.0, 750),
        # Which requests draw a stray 429 is the simulator's seeded dice: a row refused twice
        # near the end adds a second retry-after to the run, so the figure is the median of a
        # few seeds, not the luck of one.
        *(scenario for name, default in (("stray", True), ("stray-64", False)) for scenario in (
            Scenario(f"no-{name}", fast, (), 3000, None, default_concurrency=default),
            *(Scenario(f"{name}/{seed}", {**fast, "stray_429_rate": 0.02, "seed": seed}, (),
                       3000, None, max_429=1.0, default_concurrency=default)
              for seed in range(STRAY_SEEDS)),
        )),
        Scenario("soak", {**fast, "fail_rate": 0.05, "drop_rate": 0.02, "garbage_rate": 0.01,
                          "hang_rate": 0.01, "stray_429_rate": 0.01, "seed": 11},
                 ("--timeout", "3", "--max-attempts", "12"), 2000, None, max_429=1.0, max_wall=20.0),
        *(cell(shape, per_word, headers, matrix_rows)
          for shape in SHAPES for per_word in TOKENS_PER_WORD for headers in (True, False)),
    ]


@dataclass(frozen=True)
class Result:
    """Figures of one run; `before` + `sending` + `after` = `wall`."""

    scenario: Scenario
    exit: int
    failed: int
    requests: int
    limited: int  # requests answered 429
    cold: int  # of them, before the first calibration (see COLD)
    wall: float
    before: float  # start-up: imports, reading, planning, until the first request arrives
    sending: float  # first arrival to last arrival at the simulator
    after: float  # the last answer, journal, output and summary, until the process exits
    billed_once: bool  # every prompt billed exactly once
    usage_exact: bool  # the output's usage totals are what the simulator billed
    stderr: str
    checks: list[str] = field(default_factory=list)

    @property
    def share_429(self) -> float:
        return self.limited / self.requests if self.requests else 0.0

    @property
    def ratio(self) -> float | None:
        ideal = self.scenario.ideal
        return self.wall / ideal if ideal else None

    @property
    def met(self) -> bool:
        s = self.scenario
        return (
            self.exit == 0 and self.failed == 0 and self.share_429 <= s.max_429
            and (self.ratio is None or self.ratio <= s.max_ratio)
            and (s.max_wall is None or self.wall <= s.max_wall)
            and (s.max_cold is None or self.cold <= s.max_cold)
            and self.billed_once and self.usage_exact
        )


def run(scenario: Scenario, concurrency: int, workdir: Path, against: Path | None = None) -> Result:
    """One run of the CLI against a fresh simulator; `against`: that checkout's batchrun."""
    stem = scenario.name.replace("/", "-")  # stray/3: one of a scenario's seeds
    src = workdir / f"{stem}.csv"
    src.write_text("prompt\n" + "\n".join(f'"{p}"' for p in prompts(scenario)) + "\n")
    out = workdir / f"{stem}{'-against' if against else ''}.parquet"
    env = {**os.environ, "PYTHONPATH": str(against)} if against else None
    with SimulatorThread(SimConfig(**scenario.sim)) as sim:  # type: ignore[arg-type]
        concurrency = scenario.concurrency or concurrency
        cmd = [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
               "--base-url", sim.base_url, "--model", "sim-1",
               "--max-tokens", str(scenario.max_tokens), "--no-progress", "--fresh",
               *(() if scenario.default_concurrency else ("--concurrency", str(concurrency))),
               *scenario.flags]
        start = time.monotonic()  # the simulator's clock (its loop's time) is monotonic too
        # In the work folder: `python -m` puts the current folder first on the path, so a run
        # from a checkout would import that checkout's batchrun whatever PYTHONPATH says.
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
        end = time.monotonic()
        stats = sim.stats
        arrivals = sorted(stats.arrivals)
    failed, usage_exact = scenario.rows, False
    if out.exists():
        statuses = pq.read_table(out, columns=["status"]).column("status").to_pylist()
        failed = sum(s != "ok" for s in statuses)
        meta = json.loads(pq.read_metadata(out).metadata[b"batchrun"])
        # The three totals every version writes (newer ones add cached and reasoning tokens).
        billed = {"prompt_tokens": stats.billed_prompt_tokens,
                  "completion_tokens": stats.billed_completion_tokens,
                  "total_tokens": stats.billed_total_tokens}
        usage_exact = {name: meta["usage"].get(name) for name in billed} == billed
    first = stats.first_answer_at
    cold = sum(1 for at in stats.refused_arrivals if first is None or at < first + COLD)
    billed = stats.billed_by_prompt
    return Result(
        scenario=scenario, exit=result.returncode, failed=failed, requests=stats.requests,
        limited=stats.rate_limited, cold=cold, wall=end - start,
        before=arrivals[0] - start if arrivals else 0.0,
        sending=arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0,
        after=end - arrivals[-1] if arrivals else 0.0,
        billed_once=len(billed) == scenario.rows and set(billed.values()) == {1},
        usage_exact=usage_exact, stderr=result.stderr.strip()[-300:],
    )


HEADER = (f"{'scenario':<26} {'exit':>4} {'failed':>6} {'requests':>8} {'429s':>5} {'cold':>4} "
          f"{'429 %':>6} {'wall s':>7} {'= start':>7} {'+ sending':>9} {'+ end':>6} "
          f"{'ideal s':>7} {'wall/ideal':>10} {'/nominal':>8} {'send/ideal':>10}  targets met")


def line(r: Result, note: str = "", label: str | None = None) -> str:
    s = r.scenario
    ideal = f"{s.ideal:>7.2f}" if s.ideal else f"{'-':>7}"
    ratio = f"{r.ratio:>10.3f}" if r.ratio is not None else f"{'-':>10}"
    nominal = f"{r.wall / s.nominal:>8.3f}" if s.nominal else f"{'-':>8}"
    sending = f"{r.sending / s.ideal:>10.3f}" if s.ideal else f"{'-':>10}"
    return (f"{label or s.name:<26} {r.exit:>4} {r.failed:>6} {r.requests:>8} {r.limited:>5} "
            f"{r.cold:>4} {100 * r.share_429:>5.2f}% {r.wall:>7.2f} {r.before:>7.2f} "
            f"{r.sending:>9.2f} {r.after:>6.2f} {ideal} {ratio} {nominal} {sending}  "
            f"{'yes' if r.met else 'NO'}{note}")


def notes(r: Result, results: dict[str, Result]) -> str:
    """What a scenario's line must add: the stray run against the one without, the soak's checks."""
    name = r.scenario.name
    group, _, seed = name.partition("/")
    if seed and group.startswith("stray") and f"no-{group}" in results:
        return f"; {r.wall / results[f'no-{group}'].wall:.2f}x the run without stray 429s"
    if name == "soak":
        return (f"; billed once: {'yes' if r.billed_once else 'NO'}, usage exact: "
                f"{'yes' if r.usage_exact else 'NO'}, wall <= 20 s")
    return ""


def chosen(name: str, only: list[str] | None) -> bool:
    """Is the scenario `name` among `--only` (names, groups or patterns)?"""
    if not only:
        return not name.startswith("matrix/")  # the matrix takes half an hour: asked for by name
    return any(name == o or name.split("/")[0] == o or fnmatch.fnmatch(name, o) for o in only)


def stray_summary(results: dict[str, Result], concurrency: int) -> None:
    for group, how in (("stray", "the CLI's default concurrency"),
                       ("stray-64", f"--concurrency {concurrency}")):
        walls = [r.wall for name, r in results.items() if name.startswith(f"{group}/")]
        if walls and f"no-{group}" in results:
            ratio = statistics.median(walls) / results[f"no-{group}"].wall
            print(f"stray 429s at {how}: median of {len(walls)} seeds {ratio:.2f}x the run "
                  f"without them (target <= 1.5x: {'yes' if ratio <= 1.5 else 'NO'})")


def matrix_summary(results: dict[str, Result], label: str) -> None:
    cells = [r for name, r in results.items() if name.startswith("matrix/")]
    if not cells:
        return
    met = sum(r.met for r in cells)
    print(f"matrix, {label}: {met} of {len(cells)} cells met; 429s {min(r.share_429 for r in cells):.2%}"
          f"-{max(r.share_429 for r in cells):.2%}, wall/ideal {min(r.ratio or 0 for r in cells):.3f}"
          f"-{max(r.ratio or 0 for r in cells):.3f}, cold 429s at most {max(r.cold for r in cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows of the limit scenarios")
    parser.add_argument("--matrix-rows", type=int, default=400, help="rows of each matrix cell")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", action="append",
                        help="run only these scenarios, groups or patterns (the matrix: 'matrix')")
    parser.add_argument("--against", type=Path, default=None,
                        help="another batchrun checkout to run right after each scenario")
    args = parser.parse_args()
    # Bytecode, as `pip install` compiles it: each run would otherwise compile what changed.
    for checkout in (Path(__file__).resolve().parent.parent, args.against):
        if checkout is not None:
            compileall.compile_dir(checkout / "batchrun", quiet=1)
    print(f"--concurrency {args.concurrency} (the matrix: {MATRIX_CONCURRENCY}), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(HEADER)
    results: dict[str, Result] = {}
    others: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios(args.rows, args.matrix_rows):
            if not chosen(scenario.name, args.only):
                continue
            r = results[scenario.name] = run(scenario, args.concurrency, Path(tmp))
            print(line(r, notes(r, results)), flush=True)
            if r.exit != 0:
                print(f"  stderr: {r.stderr}")
            if args.against:
                o = others[scenario.name] = run(scenario, args.concurrency, Path(tmp), args.against)
                print(line(o, notes(o, others), label=f"  {args.against.name}"), flush=True)
    stray_summary(results, args.concurrency)
    matrix_summary(results, "this checkout")
    if args.against:
        print(f"against {args.against}:")
        stray_summary(others, args.concurrency)
        matrix_summary(others, str(args.against))


if __name__ == "__main__":
    main()
