"""Start `batchrun simulate` in a subprocess for a benchmark and yield its base URL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator


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
