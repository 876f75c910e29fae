"""The online backend: every job is its own chat-completions request, under the run's limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from batchrun.errors import BatchrunError, JobStopped
from batchrun.journal.database import Journal
from batchrun.protocol.tokens import CALIBRATION_META, Calibration
from batchrun.running.context import RunContext
from batchrun.running.rows import Job
from batchrun.sending.attempts import JobSender
from batchrun.sending.limiter import Limiter
from batchrun.sending.workers import Pump

KEEP_CALIBRATION_EVERY = 10.0  # seconds between saving the learned token ratio to the journal


class OnlineBackend:
    """Workers send jobs through one limiter and one connection pool."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Send every job; answers are committed as they arrive."""
        first = await _first_jobs(jobs, run)
        if first is None:
            return  # nothing to send: no HTTP stack loaded
        jobs = first
        # Here, not at the top: a run with nothing to send (every row answered by the shared
        # cache or an earlier run) does not pay the HTTP stack's import.
        from batchrun.sending.http import Sender, connections

        config = run.config
        limiter = Limiter(config.rpm, config.tpm, config.concurrency)
        run.stopper.when_stopping(limiter.close)  # starts waiting on it go now, and see the stop
        run.stats.pace = lambda: (limiter.rpm, limiter.tpm, limiter.pauses)
        async with connections(run.base_url, config.concurrency) as pool:
            scrub = (run.key.reveal(),) if run.key else ()
            wire = Sender(pool, run.key, config.timeout, scrub=scrub)
            # An earlier run on this output may have learned how the provider counts tokens.
            calibration = Calibration(None if config.fresh else
                                      run.journal.meta().get(CALIBRATION_META))
            seats = asyncio.Semaphore(config.concurrency)  # rows sending, or about to
            sender = JobSender(config, wire, limiter, run.stats, run.stopper, run.price, run.emit,
                               calibration, seats)
            keeper = asyncio.create_task(keep_calibration(run.journal, calibration))
            try:
                await Pump(run, sender.settle, seats, config.concurrency).drain(jobs)
            finally:
                keeper.cancel()
                save_calibration(run.journal, calibration)


async def _first_jobs(jobs: AsyncIterator[list[Job]], run: RunContext
                      ) -> AsyncIterator[list[Job]] | None:
    """The jobs from the first batch that holds any on, or None when none does (or the run
    stops first). The batches before it only recorded answers (the cache's, dedup copies):
    they are committed batch by batch, as the pump's group commit would."""
    try:
        async for batch in jobs:
            if batch:
                return _chained(batch, jobs)
            run.journal.flush()
            if run.stopper.stopping:
                return None
            await asyncio.sleep(0)  # a signal's handler runs between batches
    except BatchrunError as exc:  # the journal cannot be written: a reason to stop, as in the pump
        run.stopper.stop(exc)
    return None


async def _chained(first: list[Job], rest: AsyncIterator[list[Job]]) -> AsyncIterator[list[Job]]:
    yield first
    async for batch in rest:
        yield batch


async def keep_calibration(journal: Journal, calibration: Calibration) -> None:
    """Save the learned token ratio now and then, so that a killed run keeps it too (the pool
    backend's too)."""
    while True:
        await asyncio.sleep(KEEP_CALIBRATION_EVERY)
        save_calibration(journal, calibration)


def save_calibration(journal: Journal, calibration: Calibration) -> None:
    """Keep the learned token ratio in the journal, for the next run on this output."""
    learned = calibration.learned()
    if learned:
        # A journal that cannot be written has stopped the run already, through its commits.
        with contextlib.suppress(JobStopped):
            journal.set_meta(**{CALIBRATION_META: learned})
