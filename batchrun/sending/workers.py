"""The pump: a fixed pool of workers settles the pending jobs, each answer committed before its
worker sends again.

One producer task feeds a bounded queue from the plan; workers take jobs from it and call
`settle(job)`; the group commit makes each outcome durable, then wakes its worker. A worker holds
one of `concurrency` seats while it settles a job; a row waiting to retry gives its seat up (see
`JobSender`), so there are twice as many workers as seats: rows waiting out a stray 429's second
do not idle the run, and no more than `concurrency` rows are ever sending or about to. A stop
cancels the producer (it may wait on a full queue no worker drains) and lets the workers finish
what they hold; queued jobs stay pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from batchrun.errors import BatchrunError, JobStopped
from batchrun.journal.database import GroupCommit
from batchrun.protocol.outcome import Outcome
from batchrun.running.context import RunContext
from batchrun.running.rows import Job
from batchrun.running.stopping import Stopper

FLUSH_EVERY = 0.1  # seconds: the longest a buffered journal row waits (answers: one loop turn)

Settle = Callable[[Job], Awaitable[Outcome | None]]


class Pump:
    """Workers and the group commit of one run."""

    def __init__(self, run: RunContext, settle: Settle, seats: asyncio.Semaphore,
                 concurrency: int) -> None:
        self._run = run
        self._settle = settle
        self._seats = seats
        self._workers = 2 * concurrency
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self._workers)
        self._commits = GroupCommit(run.journal, FLUSH_EVERY, self._committed)

    async def drain(self, jobs: AsyncIterator[list[Job]]) -> None:
        """Settle every job of `jobs`, or stop early when the run stops."""
        stopper = self._run.stopper
        workers = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        producer = asyncio.create_task(self._produce(jobs))
        flusher = asyncio.create_task(self._commits.run())
        stopper.when_stopping(producer.cancel)
        stopper.when_cancelled(lambda: [task.cancel() for task in workers])
        try:
            producer_error = await produced(producer, stopper)
            if stopper.stopping:
                self._release_idle()
            await settled(workers)
            if producer_error is not None:
                raise producer_error
        finally:
            for task in (producer, *workers, flusher):
                task.cancel()
            # Nothing of the pump runs on after it: the plan may be closed once this returns.
            await asyncio.gather(producer, *workers, flusher, return_exceptions=True)
            self._commits.flush()

    async def _produce(self, jobs: AsyncIterator[list[Job]]) -> None:
        stopper, queue = self._run.stopper, self._queue
        async for batch in jobs:
            if stopper.stopping:
                break
            for job in batch:
                # A coroutine only when the queue is full: then it waits for room.
                if queue.full():
                    await queue.put(job)
                else:
                    queue.put_nowait(job)
            await asyncio.sleep(0)  # let workers and the flusher run between batches
        for _ in range(self._workers):
            await self._queue.put(None)

    def _release_idle(self) -> None:
        """The producer was cancelled before it could say "no more": queued jobs stay pending,
        and workers idle on an empty queue must not wait for the grace timer."""
        while not self._queue.empty():
            self._queue.get_nowait()
        for _ in range(self._workers):
            self._queue.put_nowait(None)

    async def _work(self) -> None:
        stopper, queue = self._run.stopper, self._queue
        while True:
            try:  # a coroutine only when the queue is empty: then it waits for a job
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                job = await queue.get()
            if job is None or stopper.stopping:
                return
            async with self._seats:
                if stopper.stopping:
                    return
                outcome = await self._settle(job)
                if outcome is not None:
                    # Durable before this seat sends again: a kill -9 pays twice only for
                    # requests in flight.
                    try:
                        await self._commits.commit(outcome)
                    except JobStopped as exc:  # the journal cannot be written: start no more
                        stopper.stop(exc)
                        return

    def _committed(self, n: int) -> None:
        self._run.stats.finished += n


async def produced(producer: asyncio.Task[None], stopper: Stopper) -> BaseException | None:
    """Wait for a pump's producer. A BatchrunError it raises (the journal cannot be written)
    stops the run; a bug cancels it and is returned, to raise once the workers are done."""
    try:
        await producer
    except asyncio.CancelledError:
        if not stopper.stopping:
            raise  # the pump itself is cancelled, not only its producer
    except BatchrunError as exc:
        stopper.stop(exc)
    except BaseException as exc:
        stopper.cancel()
        return exc
    return None


async def settled(workers: Sequence[asyncio.Future[None]]) -> None:
    """Wait for every worker; raise the first error one of them ended with (not a cancel)."""
    for result in await asyncio.gather(*workers, return_exceptions=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
