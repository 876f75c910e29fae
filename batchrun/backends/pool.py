"""The pool backend: a run with several endpoints (`[[endpoints]]`, `--fallback-model`), online.

Each endpoint sends as a run with one endpoint does (`backends.online`): its own limiter,
connection pool and key, seats for its concurrency and a `JobSender`, here with a stop switch of
its own (a job-wide failure there retires it) and with the run's one budget. The pump
(`sending.pool`) hands rows to whichever endpoint has a free seat and a turn, retires endpoints
and sends rows on; each endpoint counts for itself, and the run's counters are their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from batchrun.backends.online import keep_calibration, save_calibration
from batchrun.protocol.tokens import CALIBRATION_META, Calibration
from batchrun.running.context import RunContext
from batchrun.running.rows import Job
from batchrun.running.stats import Stats, Tally
from batchrun.running.stopping import Emit
from batchrun.sending.attempts import JobSender
from batchrun.sending.budget import Budget
from batchrun.sending.http import Sender, connections
from batchrun.sending.limiter import Limiter
from batchrun.sending.pool import Member, PoolPump, Switch, sending_as
from batchrun.sending.routing import try_order
from batchrun.settings.prices import run_price


class PoolBackend:
    """Several endpoints share the rows, each under its own limits; one budget and journal."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Send every job on the endpoints; answers are committed as they arrive."""
        config = run.config
        budget = Budget(config.max_cost, config.max_total_tokens)
        calibration = Calibration(None if config.fresh else
                                  run.journal.meta().get(CALIBRATION_META))
        # Every key of the run is scrubbed from every endpoint's messages.
        scrub = tuple(key.reveal() for key in run.keys.values() if key is not None)
        limiters: list[Limiter] = []
        async with contextlib.AsyncExitStack() as stack:
            members = []
            for index, endpoint in enumerate(config.endpoints):
                at = config.at(endpoint)
                limiter = Limiter(at.rpm, at.tpm, at.concurrency)
                limiters.append(limiter)
                switch = Switch(run.stopper)
                switch.when_retired(_closing(limiter))
                run.stopper.when_stopping(limiter.close)
                stats = Stats(limits=(at.rpm, at.tpm))
                stats.pace = _pace_of(limiter)
                run.stats.endpoints[endpoint.name] = stats
                pool = await stack.enter_async_context(
                    connections(endpoint.base_url, at.concurrency))
                wire = Sender(pool, run.keys.get(endpoint.name), at.timeout, scrub=scrub)
                seats = asyncio.Semaphore(at.concurrency)
                price = run_price(at.model, config.price, config.backend, config.batch_price)
                sender = JobSender(at, wire, limiter, stats, switch, price,
                                   _tagged(run.emit, endpoint.name), calibration, seats,
                                   budget=budget, halt=run.stopper)
                members.append(Member(index, endpoint.name, endpoint.fallback, at.concurrency,
                                      sender.settle, seats, switch, stats,
                                      sending_as(config, endpoint, price, run.price),
                                      endpoint.base_url))
            switches = [m.switch for m in members]
            run.stats.pace = lambda: _summed(limiters, switches)
            tally = Tally(run.stats, [m.stats for m in members])
            keeper = asyncio.create_task(keep_calibration(run.journal, calibration))
            try:
                await PoolPump(run, members, try_order(config.endpoints), tally.fold).drain(jobs)
            finally:
                keeper.cancel()
                save_calibration(run.journal, calibration)


def _tagged(emit: Emit, name: str) -> Emit:
    """An endpoint's events (its pauses after 429s) name it."""
    return lambda event, data: emit(event, {**data, "endpoint": name})


def _closing(limiter: Limiter) -> Callable[[str], None]:
    """A retiring endpoint's starts waiting on its limiter go now, and see the switch."""
    return lambda _reason: limiter.close()


def _pace_of(limiter: Limiter) -> Callable[[], tuple[float | None, float | None, int]]:
    return lambda: (limiter.rpm, limiter.tpm, limiter.pauses)


def _summed(limiters: list[Limiter], switches: list[Switch]
            ) -> tuple[float | None, float | None, int]:
    """The pool's pace: the sum of the paces of its endpoints that still send (unpaced if any
    one is), and every endpoint's pauses so far."""
    live = [lim for lim, switch in zip(limiters, switches, strict=True) if switch.reason is None]
    rpms, tpms = [lim.rpm for lim in live], [lim.tpm for lim in live]
    rpm = None if any(r is None for r in rpms) else sum(r for r in rpms if r is not None)
    tpm = None if any(t is None for t in tpms) else sum(t for t in tpms if t is not None)
    return rpm, tpm, sum(lim.pauses for lim in limiters)
