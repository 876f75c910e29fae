"""Progress: what a person or a log pipeline sees while a run goes on."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .config import RunConfig
    from .engine import Stats
    from .summary import Summary

log = logging.getLogger("batchrun")
PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class Reporter:
    """Prints a progress line every few seconds (or nothing) and logs run events."""

    def __init__(self, enabled: bool, stream: TextIO | None = None,
                 every: float = PLAIN_EVERY) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every = every

    @classmethod
    def for_config(cls, config: RunConfig) -> Reporter:
        """The reporter a run's settings ask for."""
        return cls(config.progress)

    def event(self, name: str, data: dict[str, Any]) -> None:
        """A run event (start, stop, ...): logged at info, stops at warning."""
        level = logging.WARNING if name == "stop" else logging.INFO
        log.log(level, name, extra={"event": name, "data": data})

    async def watch(self, stats: Stats) -> None:
        """Report progress until cancelled."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(self.every)
            self.stream.write(progress_line(stats) + "\n")
            self.stream.flush()

    def finish(self, summary: Summary) -> None:
        """The run is over (the CLI prints the summary itself)."""


def progress_line(stats: Stats) -> str:
    """One line of progress: rows done of total, rates, spend, retries, errors, ETA."""
    elapsed = max(time.time() - stats.started, 1e-9)
    done = stats.reused + stats.copies + stats.invalid + stats.finished
    total = stats.total_rows or 0
    rate = stats.finished / elapsed
    left = max(0, stats.to_send - stats.finished) if stats.producing_done else max(0, total - done)
    eta = f"{left / rate:.0f}s" if rate > 0 else "?"
    tokens = stats.prompt_tokens + stats.completion_tokens
    return (
        f"batchrun: {done}/{total} rows, {stats.ok} ok, {stats.errors} error, "
        f"{rate:.1f} req/s, {tokens / elapsed:.0f} tok/s, ${stats.cost_usd:.4f}, "
        f"{stats.retries} retries, {stats.rate_limited} 429s, ETA {eta}"
    )
