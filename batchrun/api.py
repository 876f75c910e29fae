"""The Python API and the one place a run is driven end to end: execute, then write, then sum up."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import RunConfig, Secret, resolve_key
from .engine import Run
from .errors import BatchrunError
from .progress import Reporter
from .summary import Summary, build_summary, output_metadata
from .write import write_output


async def run_async(config: RunConfig, *, key: Secret | None = None,
                    reporter: Reporter | None = None) -> Summary:
    """Run a job to the end and write its output; raises JobStopped/Interrupted with `.summary`."""
    if key is None:
        key = resolve_key(config)
    reporter = reporter or Reporter.for_config(config)
    run = Run(config, key, on_event=reporter.event)
    started = time.time()
    watcher = asyncio.create_task(reporter.watch(run.stats))
    try:
        try:
            journal = await run.execute()
        except BatchrunError as stop:
            if getattr(run, "journal", None) is not None:
                stop.summary = _summary(run, time.time() - started, None, stop.message)  # type: ignore[attr-defined]
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        counts = journal.counts()
        finished = time.time()
        summary = _summary(run, finished - started, None, None)
        metadata = output_metadata(summary, counts, config, started, finished)
        output, sidecar = write_output(config, run.table, journal, metadata)
        journal.set_meta(state="finished", finished_at=finished, stop_reason=None)
        summary = _summary(run, finished - started, (output, sidecar), None)
        reporter.finish(summary)
        return summary
    finally:
        run.release()


def _summary(run: Run, seconds: float, paths: Any, stopped: str | None) -> Summary:
    counts = run.journal.counts()
    output, sidecar = paths if paths else (None, None)
    return build_summary(counts, run.stats, seconds, run.config, output, sidecar,
                         priced=run.price is not None, stopped=stopped)


def run(config: RunConfig, *, key: Secret | None = None,
        reporter: Reporter | None = None) -> Summary:
    """Run a job from plain Python; works inside a running event loop (Jupyter) too."""
    coro_factory: Callable[[], Any] = lambda: run_async(config, key=key, reporter=reporter)  # noqa: E731
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    # A loop is already running in this thread: run ours in a thread of its own.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro_factory())
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="batchrun")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
