"""What the benchmarks share: a simulator in its own process, inputs of distinct prompts, and
child processes measured alone (wall, CPU, peak RSS), from this checkout or another one.

`--against CHECKOUT` (throughput.py, memory.py) runs a second batchrun beside this one in every
round (`Contender`), so a before/after figure comes from the same rounds on the same machine, not
from runs minutes apart. Each contender's runs start in its own checkout: `python -m` puts the
working folder ahead of PYTHONPATH, so from this repository's root a PYTHONPATH alone ran this
checkout twice. `contenders` checks which package each one imports.
"""

from __future__ import annotations

import compileall
import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def simulator_process(*flags: str) -> Iterator[str]:
    """A simulator on a free loopback port in its own process, stopped with SIGTERM after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "simulate", "--port", "0", *flags],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"simulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


SHORT = "Summarize in one sentence: review {i} says the kettle is fine."
REVIEW = ("Summarize review {i}: The kettle arrived quickly, boils fast, and the handle stays "
          "cool; the lid is a bit stiff and the cord is short, but for the price it does "
          "exactly what I wanted.")
# Sixty words: the prompts of issue 27's memory figures.
PARAGRAPH = ("Summarize review {i} for the product team in one sentence: the kettle arrived "
             "quickly and boils a full litre in under three minutes, the handle stays cool and "
             "the light is pleasant; the lid is a bit stiff, the cord is short and the base "
             "wobbles on our tiled counter, but for the price it does exactly what I wanted and "
             "I would buy it again.")


def write_prompts(path: Path, rows: int, text: str = SHORT) -> None:
    """A CSV of `rows` distinct prompts (`text` with the row number as {i}) and an id column."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt"])
        for i in range(rows):
            writer.writerow([i, text.format(i=i)])


def write_parquet_prompts(path: Path, rows: int, text: str = SHORT) -> None:
    """The same rows as Parquet in one row group, as pandas writes a frame by default (up to a
    million rows a group). One group is one write: the whole table is built first (made a slice
    at a time, so its Python strings come and go)."""
    import pyarrow as pa  # here: a benchmark's own process stays small (see `measure`)
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("prompt", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        table = pa.Table.from_batches([
            pa.record_batch([pa.array(range(start, min(start + 50_000, rows))),
                             pa.array([text.format(i=i)
                                       for i in range(start, min(start + 50_000, rows))])],
                            schema=schema)
            for start in range(0, rows, 50_000)], schema=schema)
        writer.write_table(table, row_group_size=max(rows, 1))


def write_in_child(kind: str, path: Path, rows: int, text: str = SHORT) -> None:
    """`write_prompts` (kind "csv") or `write_parquet_prompts` in a process of its own."""
    write = "write_parquet_prompts" if kind == "parquet" else "write_prompts"
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                    f"import _common; _common.{write}(_common.Path({str(path)!r}), {rows}, "
                    f"{text!r})"], check=True)


@dataclass(frozen=True)
class Measured:
    """One child process, measured alone."""

    wall: float  # seconds, start to exit
    cpu: float  # user + system seconds of the child (its rusage: barely moved by other load)
    peak_mib: float  # its peak resident memory


def measure(cmd: Sequence[str], env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Measured:
    """Run `cmd` to its end and measure it (os.wait4: this child's rusage alone); a failure
    stops the benchmark with the child's stderr.

    The child's peak RSS counts the pages it shared with this process when it was forked, before
    it ran `cmd`: a benchmark that measures memory must stay small itself (make big inputs in a
    process of their own: `write_in_child`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=cwd)
    assert proc.stderr is not None
    err = proc.stderr.read()  # the child ends; its stderr must not fill the pipe meanwhile
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{list(cmd)[:4]} failed ({code}):\n{err.decode(errors='replace')[-2000:]}")
    # ru_maxrss is in KiB on Linux.
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0)


@dataclass(frozen=True)
class Contender:
    """A batchrun to measure: this checkout, or another one (`--against`)."""

    name: str
    checkout: Path | None = None  # None: this one

    @property
    def root(self) -> Path:
        """The checkout its runs start in (first on their sys.path)."""
        return self.checkout or HERE.parent

    def env(self) -> dict[str, str]:
        """The environment its runs get: its checkout's package ahead of the installed one."""
        return {**os.environ, "PYTHONPATH": str(self.root)}

    def run(self, *args: str) -> Measured:
        """`batchrun ARGS` as a fresh process, measured (paths in ARGS must be absolute)."""
        return measure([sys.executable, "-m", "batchrun", *args], self.env(), self.root)

    def package(self) -> Path:
        """Where the batchrun its runs import lives."""
        found = subprocess.run([sys.executable, "-c", "import batchrun; print(batchrun.__file__)"],
                               env=self.env(), cwd=self.root, capture_output=True, text=True,
                               check=True)
        return Path(found.stdout.strip()).resolve().parent


def contenders(against: Path | None) -> list[Contender]:
    """This checkout, and the one named by --against; each compiled to bytecode first, as `pip
    install` does (a source checkout with PYTHONDONTWRITEBYTECODE=1 would compile every run)."""
    found = [Contender("batchrun", None)]
    if against is not None:
        if not (against / "batchrun" / "__init__.py").exists():
            raise SystemExit(f"--against {against}: no batchrun package there")
        found.append(Contender(against.resolve().name, against.resolve()))
    for contender in found:
        compileall.compile_dir(contender.root / "batchrun", quiet=1)
        if contender.package() != (contender.root / "batchrun").resolve():
            raise SystemExit(f"{contender.name} imports batchrun from {contender.package()}, "
                             f"not from {contender.root}")
    return found
