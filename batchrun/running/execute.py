"""The engine: plan the pending jobs, hand them to a backend, and settle how the run ended.

    async with open_run(config, key, emit) as run:
        await execute(run, choose_backend(config))   # raises JobStopped / Interrupted on a stop

The plan (`pending.pending_jobs`) skips what the journal settled and dedups; the backend turns
jobs into committed outcomes; a stop (job-wide failure, budget, signal) leaves unsent rows pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Protocol

from batchrun.errors import JobStopped, StillRunning
from batchrun.running.context import RunContext
from batchrun.running.rows import Job, pending_jobs


class Backend(Protocol):
    """Turns the run's pending jobs into committed outcomes (the backends in `batchrun.backends`
    implement it; `choose_backend` there picks one)."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Settle `jobs` (or as many as the run allows before it stops) into `run.journal`."""
        ...


async def execute(run: RunContext, backend: Backend) -> None:
    """Send every pending row of the run through `backend`; raise the stop reason if it stopped."""
    jobs = pending_jobs(run.config, run.table, run.renderer, run.journal, run.stats, run.price)
    delivery = asyncio.create_task(backend.deliver(jobs, run))
    run.stopper.when_cancelled(delivery.cancel)
    with run.stopper.signals():
        try:
            await delivery
        except asyncio.CancelledError:
            if run.stopper.error is None:
                raise  # cancelled from outside, not by a second signal or the grace timer
        finally:
            await jobs.aclose()
    error = run.stopper.error
    if error is not None:
        with contextlib.suppress(JobStopped):  # a journal that cannot be written stays as is
            run.journal.flush()
            run.journal.set_meta(state="stopped", stop_reason=error.message,
                                 finished_at=time.time())
        raise error
    run.journal.flush()
    _check_held(run)


def _check_held(run: RunContext) -> None:
    """Rows still waiting in live Batch API batches: the run is not over (exit 75)."""
    held = run.journal.held_count()
    if not held:
        return
    how = ("run the same command later to collect them" if run.config.backend == "batch" else
           "run again with --backend batch to collect them (or `batchrun cancel "
           f"{run.config.output}` to send them online)")
    message = f"{held:,} requests wait in Batch API batches still running; {how}"
    run.journal.set_meta(state="waiting", stop_reason=message, finished_at=time.time())
    raise StillRunning(message)
