"""The pool's pump: several endpoints settle one run's rows, each with its own workers and seats.

    await PoolPump(run, members, try_order(endpoints), tally.fold).drain(jobs)

Pool endpoints' workers take rows from one shared queue, each once it holds one of its
endpoint's seats, so each endpoint takes rows as fast as its own limiter and seats let it (a slow
one holds no more rows than its seats), and a run goes at the sum of their limits. Each endpoint
also has a queue of its own, for rows sent to it by name: a row another endpoint failed for a
reason this one may not share (`protocol.retry.elsewhere`), tried on each endpoint at most once
in `routing.try_order` (pool endpoints first, then fallbacks in order); and a row whose endpoint
retired while it held it. Fallback endpoints take only those, and every row once no pool
endpoint is left.

An endpoint retires at a job-wide failure of its own (401, 402, quota, model not found, 403s on
every row, never answered): its `Switch` stops its starts and waits, its row in hand and its
queued rows go to the others, and the run stops (exit 3, each endpoint's reason named) only when
no endpoint is left. A budget or a signal stops the whole run, as with one endpoint.

Each outcome is committed once, when the row is settled: answered by some endpoint, or failed
where no endpoint is left to try, with its attempts, usage and cost summed over the endpoints it
went through (`routing.carried`) and the name of the endpoint that gave it. With `--cache`, an
answer is also kept in the shared cache under the key its endpoint alone gives the request.

The run is the local engine's `RunContext`, or a Ray sender actor's part of one (`Crew`): that
one has no journal, and gives the pump its `Commits` (to the ledger actor) and cache, and a pump
per block of rows, whose endpoints keep what they learned between blocks (a retired endpoint's
switch stays set, and the next pump routes around it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchrun.errors import BatchrunError, JobStopped
from batchrun.journal.database import GroupCommit, Journal
from batchrun.protocol.outcome import ERROR, OK, Outcome
from batchrun.protocol.render import (
    alone_key,
    completion_reserve,
    model_prefix,
    rendered_prefix,
    with_model,
)
from batchrun.running.rows import Job
from batchrun.running.stats import Stats
from batchrun.running.stopping import Stopper
from batchrun.sending.routing import Trail, carried, next_endpoint
from batchrun.sending.workers import FLUSH_EVERY, produced, settled
from batchrun.settings.config import RunConfig
from batchrun.settings.endpoints import Endpoint
from batchrun.settings.prices import Price

log = logging.getLogger("batchrun")

FOLD_EVERY = 0.25  # seconds between two sums of the endpoints' counters into the run's
MOVED_WORKERS = 1  # per seat of a pool endpoint: workers for rows sent to it by name

Settle = Callable[[Job, Trail], Awaitable[Outcome | None]]


class Crew(Protocol):
    """What the pump needs of its run: the local engine's `RunContext`, or a Ray sender actor's
    part of a run (no journal of its own: it gives the pump its `Commits` and cache)."""

    @property
    def stopper(self) -> Stopper: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def journal(self) -> Journal | None: ...
    def event(self, name: str, **data: Any) -> None: ...


class Commits(Protocol):
    """How a settled row becomes durable: the journal's `GroupCommit`, or a Ray worker's commits
    to the ledger actor."""

    async def commit(self, outcome: Outcome) -> None: ...
    async def run(self) -> None: ...
    def flush(self) -> int: ...


class Store(Protocol):
    """Where answers are kept for other runs (`--cache`): the shared `Cache`, or the ledger
    actor's."""

    def store(self, outcomes: Iterable[Outcome]) -> int: ...


class Switch:
    """One endpoint's stop switch: set when the endpoint retires, or when the whole run stops.

    The endpoint's sender stops (`stop`) at a job-wide failure, which retires the endpoint only;
    its waits (`sleep`) end at either.
    """

    def __init__(self, run: Stopper) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None  # why it retired (None: it has not)
        self._on_retire: list[Callable[[str], object]] = []
        run.when_stopping(self._event.set)

    @property
    def stopping(self) -> bool:
        """Does the endpoint send no more? (Retired, or the run stops.)"""
        return self._event.is_set()

    def stop(self, error: BatchrunError) -> None:
        """Retire the endpoint for the rest of the run (the first reason is the one kept)."""
        if self._event.is_set():
            return
        self.reason = error.message
        self._event.set()
        for hook in self._on_retire:
            hook(error.message)

    def when_retired(self, hook: Callable[[str], object]) -> None:
        """Call `hook(reason)` when the endpoint retires."""
        self._on_retire.append(hook)

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less if the endpoint retires or the run stops meanwhile."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=seconds)


@dataclass
class Member:
    """One endpoint as the pump drives it."""

    index: int
    name: str
    fallback: bool
    concurrency: int
    settle: Settle  # its JobSender's settle
    seats: asyncio.Semaphore
    switch: Switch
    stats: Stats  # its own counters (the run's are their sum: `Tally`)
    send_as: Callable[[Job], Job]  # the job as this endpoint sends it: its model in the body
    base_url: str = ""  # where it sends (the shared cache keeps its answers by it)
    workers: list[asyncio.Task[None]] = field(default_factory=list)


class PoolPump:
    """The workers, queues and group commit of a run with several endpoints."""

    def __init__(self, run: Crew, members: list[Member], order: tuple[int, ...],
                 fold: Callable[[], None], *, commits: Commits | None = None,
                 cache: Store | None = None) -> None:
        """`commits` and `cache`: a run without a journal of its own (a Ray worker) gives them;
        a run with one uses its journal's group commit and shared cache."""
        self._run = run
        self._members = members
        self._order = order
        self._fold = fold
        seats = sum(m.concurrency for m in members if not m.fallback)
        # The rows of the plan, then (None) one end of input for each worker taking from it.
        self._shared: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * seats)
        self._own: list[asyncio.Queue[tuple[Job, Trail]]] = [asyncio.Queue() for _ in members]
        # Endpoints retired before this pump (a Ray worker's pump per block): their switches.
        self._retired: set[int] = {m.index for m in members if m.switch.reason is not None}
        self._open = 0  # rows taken from the plan and not yet committed (or left pending)
        self._producing = True
        self._done = asyncio.Event()
        self._busy: set[asyncio.Task[None]] = set()  # workers holding a row
        self._chores: set[asyncio.Future[None]] = set()
        self._sharing: set[asyncio.Task[None]] = set()  # workers of the shared queue
        # Fallback endpoints take rows from the shared queue too: once no pool endpoint is left.
        self._fallbacks_share = all(m.fallback for m in members if m.index not in self._retired)
        self._closed = False  # drained: an endpoint retiring later is the next pump's to route
        journal = run.journal
        if journal is not None:  # the local engine's run: its journal's commits and cache
            commits, cache = GroupCommit(journal, FLUSH_EVERY, self._committed), journal.cache
        assert commits is not None, "a run without a journal gives the pump its commits"
        self._commits: Commits = commits
        # --cache: answers to keep in the shared cache, under the key of the endpoint that gave
        # them (`alone_key`), kept a fold at a time.
        self._cache = cache
        self._to_cache: list[Outcome] = []
        for member in members:
            member.switch.when_retired(functools.partial(self._retire, member))

    async def drain(self, jobs: AsyncIterator[list[Job]]) -> None:
        """Settle every job of `jobs` on the endpoints, or stop early when the run stops."""
        stopper = self._run.stopper
        for member in self._members:
            if not member.fallback or self._fallbacks_share:
                self._spawn(member, shared=True, count=2 * member.concurrency)
            own = (2 if member.fallback else MOVED_WORKERS) * member.concurrency
            self._spawn(member, shared=False, count=own)
        producer = asyncio.create_task(self._produce(jobs))
        flusher = asyncio.create_task(self._commits.run())
        folder = asyncio.create_task(self._keep_folding())
        stopper.when_stopping(producer.cancel)
        stopper.when_stopping(self._done.set)
        stopper.when_cancelled(lambda: [t.cancel() for m in self._members for t in m.workers])
        workers: list[asyncio.Task[None]] = []
        try:
            producer_error = await produced(producer, stopper)
            if producer_error is None:
                await self._done.wait()
            workers = [t for m in self._members for t in m.workers]
            self._cancel_idle(workers)  # rows still queued stay pending
            await settled([*workers, *self._chores])
            if producer_error is not None:
                raise producer_error
        finally:
            self._closed = True
            rest = [producer, folder, *(t for m in self._members for t in m.workers),
                    *self._chores, flusher]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            self._commits.flush()
            self._fold()
            self._keep_in_cache()

    def _spawn(self, member: Member, *, shared: bool, count: int) -> None:
        tasks = [asyncio.create_task(self._work(member, shared)) for _ in range(count)]
        member.workers.extend(tasks)
        if shared:
            self._sharing.update(tasks)
            for task in tasks:
                task.add_done_callback(self._sharing.discard)
            if not self._producing:  # the input is over: they too must hear it
                self._chore(self._end_of_input(count))

    async def _produce(self, jobs: AsyncIterator[list[Job]]) -> None:
        stopper, queue = self._run.stopper, self._shared
        async for batch in jobs:
            if stopper.stopping:
                break
            for job in batch:
                self._open += 1
                if queue.full():
                    await queue.put(job)
                else:
                    queue.put_nowait(job)
            await asyncio.sleep(0)  # let workers and the flusher run between batches
        self._producing = False
        self._check_done()
        await self._end_of_input(len(self._sharing))

    async def _end_of_input(self, workers: int) -> None:
        """Tell `workers` workers of the shared queue that no row follows the ones in it: each
        gives its seat back to rows sent to its endpoint by name."""
        for _ in range(workers):
            await self._shared.put(None)

    async def _keep_folding(self) -> None:
        while True:
            await asyncio.sleep(FOLD_EVERY)
            self._fold()
            self._keep_in_cache()

    def _keep_in_cache(self) -> None:
        """Store the answers since the last time in the shared cache, in one short transaction
        (another process's is waited for). A cache that cannot be written stops the run, as with
        one endpoint; its answers are in the journal."""
        if self._cache is None or not self._to_cache:
            return
        answers, self._to_cache = self._to_cache, []
        try:
            self._cache.store(answers)
        except BatchrunError as exc:
            self._run.stopper.stop(exc)

    async def _work(self, member: Member, shared: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        switch, own = member.switch, self._own[member.index]
        while not switch.stopping:
            if shared:
                # A seat first, then a row: an endpoint takes a row only when it can send it,
                # so a slow endpoint holds no more rows than its seats.
                async with member.seats:
                    job = await self._shared.get()
                    if job is None:
                        return  # the input is over
                    self._busy.add(task)  # before any await: a cancel of idle ones spares it
                    await self._settle(member, job, Trail(), task)
            else:
                job, trail = await own.get()
                self._busy.add(task)
                async with member.seats:
                    await self._settle(member, job, trail, task)

    async def _settle(self, member: Member, job: Job, trail: Trail,
                      worker: asyncio.Task[None]) -> None:
        """Settle one row on `member` (a seat held), then commit it, or send it on to another
        endpoint. The seat is held until the answer is durable: a kill -9 pays twice only for
        requests in flight."""
        try:
            if member.switch.stopping:
                outcome = None
            else:
                trail.elsewhere = False
                outcome = await member.settle(member.send_as(job), trail)
            if outcome is None:  # the run stops (the row stays pending), or the endpoint retired
                if not self._run.stopper.stopping:
                    await self._send_on(job, trail)
                else:
                    self._close_one()
            elif outcome.status == ERROR and trail.elsewhere:
                trail.tried.add(member.index)
                trail.carried = carried(trail.carried, outcome._replace(endpoint=member.name),
                                        trail.unsettled)
                trail.unsettled = 0
                await self._send_on(job, trail)
            else:
                if self._cache is not None and outcome.status == OK:
                    body = member.send_as(job).body
                    self._to_cache.append(outcome._replace(key=alone_key(body, member.base_url)))
                await self._commit(carried(trail.carried, outcome._replace(endpoint=member.name),
                                           trail.unsettled))
        except JobStopped as exc:  # the journal cannot be written: start no more
            self._run.stopper.stop(exc)
        finally:
            self._busy.discard(worker)

    async def _send_on(self, job: Job, trail: Trail) -> None:
        """Give the row to the next endpoint it has not tried; with none left, its last error is
        its outcome (or, if no endpoint ever failed it, it stays pending: the run is stopping)."""
        nxt = next_endpoint(self._order, trail.tried, self._retired)
        if nxt is not None:
            self._own[nxt].put_nowait((job, trail))
        elif trail.carried is not None:
            await self._commit(trail.carried._replace(
                attempts=trail.carried.attempts + trail.unsettled))
        else:
            self._close_one()

    async def _commit(self, outcome: Outcome) -> None:
        stats = self._run.stats
        if outcome.status == OK:
            stats.ok += 1
        else:
            stats.errors += 1
        # Durable before this seat sends again: a kill -9 pays twice only for requests in flight.
        await self._commits.commit(outcome)
        self._close_one()

    def _close_one(self) -> None:
        self._open -= 1
        self._check_done()

    def _check_done(self) -> None:
        if not self._producing and self._open <= 0:
            self._done.set()

    def _retire(self, member: Member, reason: str) -> None:
        """`member` sends no more: its queued rows go to the others; the run stops when no
        endpoint is left."""
        if self._run.stopper.stopping or self._closed:
            return  # the run's own stop, not the endpoint's; or a pump that is done
        self._retired.add(member.index)
        log.warning("endpoint %s retired for the rest of the run: %s", member.name, reason)
        self._run.event("endpoint_retired", endpoint=member.name, reason=reason)
        self._cancel_idle(member.workers)
        queue = self._own[member.index]
        left = [m for m in self._members if m.index not in self._retired]
        if not left:
            reasons = "; ".join(f"{m.name}: {_bare(m.switch.reason)}" for m in self._members)
            self._run.stopper.stop(JobStopped(f"stopped: no endpoint is left ({reasons})"))
            return
        while not queue.empty():
            self._chore(self._send_on(*queue.get_nowait()))
        if not self._fallbacks_share and all(m.fallback for m in left):
            self._fallbacks_share = True  # no pool endpoint is left: fallbacks take every row
            for fallback in left:
                self._spawn(fallback, shared=True, count=2 * fallback.concurrency)

    def _chore(self, work: Awaitable[None]) -> None:
        """Run `work` (a row sent on from a retired endpoint) as a task the pump waits for."""
        task = asyncio.ensure_future(self._stopping_on_failure(work))
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _stopping_on_failure(self, work: Awaitable[None]) -> None:
        try:
            await work
        except JobStopped as exc:  # the journal cannot be written: start no more
            self._run.stopper.stop(exc)

    def _cancel_idle(self, workers: list[asyncio.Task[None]]) -> None:
        for task in workers:
            if task not in self._busy:
                task.cancel()

    def _committed(self, n: int) -> None:
        self._run.stats.finished += n


def _bare(reason: str | None) -> str:
    """A retired endpoint's reason without the "stopped: " a job-wide stop begins with."""
    reason = reason or "retired"
    return reason.removeprefix("stopped: ")


def sending_as(config: RunConfig, endpoint: Endpoint, price: Price | None,
               rendered_price: Price | None) -> Callable[[Job], Job]:
    """A job as `endpoint` sends it: the body names its model, and the budget holds its price
    (`rendered_price`: the price the plan estimated the job's cost at)."""
    rendered, own = rendered_prefix(config), model_prefix(endpoint.model)
    if own == rendered and price == rendered_price:
        return _same
    reserve = completion_reserve(config)

    def send_as(job: Job) -> Job:
        cost = price.cost(job.tokens - reserve, reserve) if price is not None else 0.0
        return job._replace(body=with_model(job.body, rendered, own), cost_estimate=cost)

    return send_as


def _same(job: Job) -> Job:
    return job
