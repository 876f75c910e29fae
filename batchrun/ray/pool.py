"""Several endpoints in one sender actor: the local pool's pump, under one limiter actor per endpoint.

    pool = WorkerPool(part, keys, limiters, ledger, commits, stats, stopper, worker, node)
    await pool.settle(jobs, results)   # every job committed into `results`, or the run stopped

Each worker holds, per endpoint, what the local pool holds per endpoint (`backends.pool`): its
own connection pool and key (never another endpoint's), its share of the endpoint's concurrency,
a `JobSender` with the endpoint's `Switch`, and `LeasedLimits` against the endpoint's limiter
actor, so each endpoint's `--rpm`/`--tpm` is its total across the cluster. The rows go through
the local engine's `PoolPump` (`sending.pool`), one per block: a row another endpoint may answer
goes on to it (`sending.routing`), its attempts, usage and cost summed, and each row is committed
once, through the ledger actor.

Retiring is cluster-wide. An endpoint's job-wide failure in one worker retires it there (its
switch) and tells its limiter actor, which answers every later lease of that endpoint with the
reason: each other worker retires it at its next lease, before sending on it again. The run stops
(exit 3, each endpoint's reason) only when no endpoint is left; a budget or a signal stops the
whole run, as with one endpoint.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from batchrun.errors import JobStopped
from batchrun.journal.database import Journal
from batchrun.protocol.outcome import Outcome
from batchrun.protocol.tokens import Calibration
from batchrun.ray.ledger import RemoteCommit
from batchrun.ray.limits import LeasedLimits
from batchrun.running.rows import Job
from batchrun.running.stats import Stats, Tally
from batchrun.running.stopping import Stopper
from batchrun.sending.attempts import JobSender
from batchrun.sending.budget import Budget
from batchrun.sending.http import Sender, connections
from batchrun.sending.pool import Member, PoolPump, Switch, sending_as
from batchrun.sending.routing import try_order
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret
from batchrun.settings.prices import run_price


def _quiet(name: str, data: dict[str, Any]) -> None:
    """A worker's events: the driver tells what matters (its counters, retired endpoints)."""


class _Crew:
    """The pump's view of the run inside one worker: its stopper and counters, no journal."""

    journal: Journal | None = None

    def __init__(self, stopper: Stopper, stats: Stats) -> None:
        self.stopper = stopper
        self.stats = stats

    def event(self, name: str, **data: Any) -> None:
        """Nothing to show in a worker: the driver reports retired endpoints."""


class _Commits:
    """The pump's commits through the worker's `RemoteCommit`: a row's answer is durable in the
    ledger actor's journal before its seat sends again; the worker's counters go with it."""

    def __init__(self, remote: RemoteCommit, fold: Callable[[], None],
                 results: dict[bytes, tuple[Any, ...]]) -> None:
        self._remote = remote
        self._fold = fold
        self._results = results

    async def commit(self, outcome: Outcome) -> None:
        self._fold()  # the endpoints' sending counters ride along with this commit
        await self._remote.commit(outcome)
        self._results[outcome.key] = tuple(outcome)

    def release(self) -> None:
        """The block is settled: its answers are the worker's to return, no longer ours."""
        self._results = {}

    async def run(self) -> None:
        """Nothing to flush here: each commit is its own call (RemoteCommit groups them)."""
        await asyncio.Event().wait()  # until the pump cancels it

    def flush(self) -> int:
        return 0


class _Store:
    """The pump's shared cache (`--cache`): the answers go to the ledger actor, which keeps them."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self._calls: list[Any] = []

    def store(self, outcomes: Iterable[Outcome]) -> int:
        answers = [tuple(o) for o in outcomes]
        if answers:
            self._calls.append(self._ledger.keep_in_cache.remote(answers))
        return len(answers)

    async def kept(self) -> None:
        """Wait until the ledger has what was given so far: a block's answers are in the cache
        before the block ends (the driver closes the ledger once every block has)."""
        calls, self._calls = self._calls, []
        for call in calls:
            await call


class WorkerPool:
    """One worker's endpoints and the pump that routes its blocks' rows among them."""

    def __init__(self, config: RunConfig, keys: Mapping[str, Secret | None],
                 limiters: Sequence[Any], ledger: Any, commits: RemoteCommit, stats: Stats,
                 stopper: Stopper, worker: str, node: str) -> None:
        """`config` is this worker's part of the run (`worker.share`: its part of the budgets);
        each endpoint's part is its concurrency divided among the workers."""
        self._stopper = stopper
        budget = Budget(config.max_cost, config.max_total_tokens)
        calibration = Calibration()
        scrub = tuple(key.reveal() for key in keys.values() if key is not None)
        rendered = run_price(config.model, config.price, config.backend, config.batch_price)
        members = []
        for index, endpoint in enumerate(config.endpoints):
            at = replace(config.at(endpoint),
                         concurrency=max(1, math.ceil(endpoint.concurrency / config.workers)))
            switch = Switch(stopper)
            limits = LeasedLimits(limiters[index], at, stopper, worker, node,
                                  retire=_retiring(switch))
            switch.when_retired(_telling(limits, limiters[index]))
            stopper.when_stopping(limits.close)
            wire = Sender(connections(endpoint.base_url, at.concurrency),
                          keys.get(endpoint.name), at.timeout, scrub=scrub)
            seats = asyncio.Semaphore(at.concurrency)
            price = run_price(at.model, config.price, config.backend, config.batch_price)
            own = commits.parts[endpoint.name] = Stats()  # reported with each commit
            sender = JobSender(at, wire, limits, own, switch, price, _quiet, calibration, seats,
                               budget=budget, halt=stopper)
            members.append(Member(index, endpoint.name, endpoint.fallback, at.concurrency,
                                  sender.settle, seats, switch, own,
                                  sending_as(config, endpoint, price, rendered),
                                  endpoint.base_url))
        self._members = members
        self._order = try_order(config.endpoints)
        self._crew = _Crew(stopper, stats)
        self._tally = Tally(stats, [m.stats for m in members])
        self._commits = commits
        self._cache = _Store(ledger) if config.cache is not None else None

    async def settle(self, jobs: list[Job], results: dict[bytes, tuple[Any, ...]]) -> None:
        """Route `jobs` among the endpoints until each is committed (into `results`), or until
        the run stops (what is not committed then stays pending).

        A pump per block: its input ends with the block, which is what gives the seats of its
        shared queue's workers back to the rows routed to an endpoint by name. The endpoints
        (their senders, seats, switches and counters) are the worker's, shared by its blocks.
        """
        if self._stopper.stopping or not jobs:
            return
        members = [replace(m, workers=[]) for m in self._members]
        commits = _Commits(self._commits, self._tally.fold, results)
        pump = PoolPump(self._crew, members, self._order, self._tally.fold, commits=commits,
                        cache=self._cache)
        try:
            await pump.drain(_once(jobs))
        finally:
            # The stopper's and the switches' hooks keep a drained pump for the worker's life:
            # what is left of it must be small (no answers, no finished tasks).
            commits.release()
            for member in members:
                member.workers.clear()
        if self._cache is not None:
            await self._cache.kept()


async def _once(jobs: list[Job]) -> AsyncIterator[list[Job]]:
    yield jobs


def _retiring(switch: Switch) -> Any:
    """What a lease saying the endpoint retired (in another worker) does: retire it here too."""
    return lambda reason: switch.stop(JobStopped(reason))


def _telling(limits: LeasedLimits, actor: Any) -> Any:
    """An endpoint retiring in this worker: its waiting starts go now (and see the switch), and
    its limiter actor tells every other worker with their next lease."""

    def retired(reason: str) -> None:
        limits.close()
        actor.retire.remote(reason)

    return retired
