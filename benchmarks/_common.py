"""What the benchmarks share: a simulator in its own process, and an input of distinct prompts."""

from __future__ import annotations

import contextlib
import csv
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


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


def write_prompts(path: Path, rows: int, text: str = SHORT) -> None:
    """A CSV of `rows` distinct prompts (`text` with the row number as {i}) and an id column."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt"])
        for i in range(rows):
            writer.writerow([i, text.format(i=i)])
