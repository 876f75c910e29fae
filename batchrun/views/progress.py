"""Progress: what a person or a log pipeline sees while a run goes on.

Three ways to show it, chosen once per run by `Reporter.for_config`:

- ``live``: stderr is a terminal: a rich display redrawn four times a second;
- ``plain``: stderr is a file or pipe (cron, CI): one progress line every few seconds;
- ``events``: ``--log-format json``: the same numbers as ``progress`` log events, so that every
  stderr line is JSON;

and ``off`` (``--no-progress``). Run events (start, rate_limited, stop, finish) are log records
in every mode; the log level decides which are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

from batchrun.errors import UsageError
from batchrun.running.summary import duration

if TYPE_CHECKING:
    from rich.console import RenderableType

    from batchrun.running.stats import Stats
    from batchrun.running.summary import Summary
    from batchrun.settings.config import RunConfig

log = logging.getLogger("batchrun")

PLAIN_EVERY = 5.0  # seconds between progress lines (or events) when stderr is not a terminal
EVERY_ENV = "BATCHRUN_PROGRESS_EVERY"  # overrides PLAIN_EVERY, in seconds
LIVE_REFRESH = 4  # redraws per second of the terminal display
RATE_WINDOW = 10.0  # seconds of history behind the "current" rates and the ETA
MODES = ("off", "live", "plain", "events")


@dataclass(frozen=True)
class Snapshot:
    """The numbers of one progress report, computed from the run's live counters."""

    rows_done: int
    rows_total: int | None
    ok: int
    errors: int
    requests: int
    retries: int
    rate_limited: int
    in_flight: int
    tokens: int
    cost_usd: float
    elapsed_s: float
    requests_per_s: float
    tokens_per_s: float
    eta_s: float | None
    batches: tuple[tuple[str, str, int, int, int], ...] = ()  # (id, status, done, failed, total)

    def line(self) -> str:
        """One plain line, as written every few seconds when stderr is not a terminal."""
        total = "?" if self.rows_total is None else f"{self.rows_total}"
        return (
            f"batchrun: {self.rows_done}/{total} rows, {self.ok} ok, {self.errors} error, "
            f"{self.requests_per_s:.1f} req/s, {self.tokens_per_s:.0f} tok/s, "
            f"${self.cost_usd:.4f}, {self.retries} retries, {self.rate_limited} 429s, "
            f"ETA {duration(self.eta_s)}"
        ) + "".join(f"; {id_} {status} {done}/{total}" for id_, status, done, _, total
                    in self.batches)

    def as_event(self) -> dict[str, Any]:
        """The fields of a `progress` log event (rates rounded for reading)."""
        data = asdict(self)
        for name in ("elapsed_s", "requests_per_s", "tokens_per_s"):
            data[name] = round(data[name], 2)
        data["cost_usd"] = round(self.cost_usd, 6)
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        data["batches"] = [dict(zip(("id", "status", "completed", "failed", "total"), batch,
                                    strict=True)) for batch in self.batches]
        return data


class Rates:
    """Recent requests/s, tokens/s and rows/s over a sliding window (overall until it fills)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def measure(self, stats: Stats, now: float) -> tuple[float, float, float]:
        """Record the counters at `now` (monotonic); return (requests/s, tokens/s, rows/s)."""
        tokens = stats.prompt_tokens + stats.completion_tokens
        self._samples.append((now, stats.sent, tokens, stats.finished))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        t0, sent0, tokens0, rows0 = self._samples[0]
        span = now - t0
        if span < 1.0:  # too little history: average over the whole run so far
            elapsed = max(time.time() - stats.started, 1e-6)
            return stats.sent / elapsed, tokens / elapsed, stats.finished / elapsed
        return ((stats.sent - sent0) / span, (tokens - tokens0) / span,
                (stats.finished - rows0) / span)


def snapshot(stats: Stats, rates: Rates, now: float | None = None) -> Snapshot:
    """What the run has done so far, with current rates and an ETA."""
    requests_per_s, tokens_per_s, rows_per_s = rates.measure(
        stats, time.monotonic() if now is None else now)
    done = stats.reused + stats.cached + stats.copies + stats.invalid + stats.finished
    if stats.producing_done:
        left = max(0, stats.to_send - stats.finished)
    else:  # not all rows planned yet: every row not done may still need a request
        left = max(0, (stats.total_rows or 0) - done)
    eta = 0.0 if left == 0 else (left / rows_per_s if rows_per_s > 0 else None)
    return Snapshot(
        rows_done=done, rows_total=stats.total_rows, ok=stats.ok, errors=stats.errors,
        requests=stats.sent, retries=stats.retries, rate_limited=stats.rate_limited,
        in_flight=stats.in_flight, tokens=stats.prompt_tokens + stats.completion_tokens,
        cost_usd=stats.cost_usd, elapsed_s=max(0.0, time.time() - stats.started),
        requests_per_s=requests_per_s, tokens_per_s=tokens_per_s, eta_s=eta,
        batches=tuple((id_, *state) for id_, state in stats.batches.items()),
    )


def progress_every(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between plain progress lines: BATCHRUN_PROGRESS_EVERY, else PLAIN_EVERY."""
    raw = environ.get(EVERY_ENV, "").strip()
    if not raw:
        return PLAIN_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every > 0:  # also catches nan
        raise UsageError(f"{EVERY_ENV}={raw!r} must be a number of seconds greater than 0")
    return every


class Reporter:
    """Shows a run's progress in one of MODES and logs its events."""

    def __init__(self, mode: str = "off", *, stream: TextIO | None = None,
                 every: float = PLAIN_EVERY) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.stream = stream
        self.every = every

    @classmethod
    def for_config(cls, config: RunConfig, stream: TextIO | None = None) -> Reporter:
        """The reporter a run's settings and its stderr ask for."""
        every = progress_every()
        stream = stream or sys.stderr
        if not config.progress:
            mode = "off"
        elif config.log_format == "json":
            mode = "events"
        elif _is_terminal(stream):
            mode = "live"
        else:
            mode = "plain"
        return cls(mode, stream=stream, every=every)

    def event(self, name: str, data: dict[str, Any]) -> None:
        """A run event (start, rate_limited, stop, finish, ...) as a log record."""
        level = logging.WARNING if name == "stop" else logging.INFO
        log.log(level, name, extra={"event": name, "data": data})

    async def watch(self, stats: Stats) -> None:
        """Report progress until cancelled; the display is gone (or final) when this returns."""
        if self.mode == "live":
            await self._watch_live(stats)
        elif self.mode in ("plain", "events"):
            await self._watch_lines(stats)

    def finish(self, summary: Summary, exit_code: int | None = None) -> None:
        """The run is over: a `finish` event with the summary's totals (the CLI prints the summary)."""
        code = summary.exit_code if exit_code is None else exit_code
        data = summary.as_dict()
        data["seconds"] = round(summary.seconds, 3)
        for name in ("cost_usd", "cost_this_run"):  # float sums: 0.026137999999999990
            if data.get(name) is not None:
                data[name] = round(data[name], 8)
        data["exit_code"] = code
        # Info whatever the outcome: the stop event and the error line already carry the severity.
        log.info("finish", extra={"event": "finish", "data": data})

    async def _watch_lines(self, stats: Stats) -> None:
        rates = Rates()
        reported = False
        try:
            while True:
                await asyncio.sleep(self.every)
                self._report(snapshot(stats, rates))
                reported = True
        finally:
            # A long run's log ends with where it got to; a short one stays quiet.
            if reported:
                self._report(snapshot(stats, rates))

    def _report(self, snap: Snapshot) -> None:
        if self.mode == "events":
            log.info("progress", extra={"event": "progress", "data": snap.as_event()})
            return
        stream = self.stream or sys.stderr
        stream.write(snap.line() + "\n")
        stream.flush()

    async def _watch_live(self, stats: Stats) -> None:
        from rich.console import Console
        from rich.live import Live

        rates = Rates()
        console = Console(file=self.stream or sys.stderr)
        live = Live(get_renderable=lambda: _render(snapshot(stats, rates)), console=console,
                    refresh_per_second=LIVE_REFRESH, transient=False, redirect_stdout=False,
                    redirect_stderr=True)
        live.start()
        try:
            await asyncio.Event().wait()  # until cancelled at the end of the run
        finally:
            # The final numbers stay on screen above the summary.
            with contextlib.suppress(Exception):
                live.stop()


def _render(snap: Snapshot) -> RenderableType:
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = snap.rows_total
    share = f"  {100 * snap.rows_done / total:.0f}%" if total else ""
    top = Table.grid(padding=(0, 1), expand=True)
    top.add_column(no_wrap=True)
    top.add_column(ratio=1)  # the bar takes what the terminal's width leaves
    top.add_column(no_wrap=True)
    top.add_row(
        Text("batchrun", style="bold"),
        ProgressBar(total=float(total or 1), completed=float(snap.rows_done if total else 0)),
        Text.assemble(
            (f"{snap.rows_done:,}/{'?' if total is None else f'{total:,}'} rows", "bold"),
            f"{share}  ETA {duration(snap.eta_s)}",
        ),
    )
    rates = Text.assemble(
        f"{snap.requests_per_s:.1f} req/s · {snap.tokens_per_s:,.0f} tok/s · ",
        (f"${snap.cost_usd:.4f}", "bold"), f" spent · {duration(snap.elapsed_s)} elapsed",
    )
    counts = Text.assemble(
        f"{snap.requests:,} requests · {snap.in_flight} in flight · {snap.retries:,} retries · ",
        (f"{snap.rate_limited:,} × 429", "yellow" if snap.rate_limited else ""),
        " · ",
        (f"{snap.errors:,} errors", "red" if snap.errors else ""),
    )
    outer = Table.grid(expand=True)
    outer.add_row(top)
    outer.add_row(rates)
    outer.add_row(counts)
    for id_, status, done, failed, total in snap.batches:
        outer.add_row(Text(f"batch {id_}: {status}, {done:,}/{total:,} done, {failed:,} failed"))
    return outer


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # closed or odd stream objects (notebooks)
        return False
