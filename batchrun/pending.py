"""The pending jobs: read, render, skip what the journal settled, dedup; any backend iterates it.

The engine's plan and `batchrun plan` share the functions in `plan`, so both count exactly the
requests a run sends. Invalid rows are recorded as row errors here, without touching the network.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import NamedTuple

from .config import RunConfig
from .cost import Price
from .journal import Journal
from .outcome import ERROR, ROW_FATAL, Outcome
from .plan import place, rendered_batches, sort_out
from .read import InputTable
from .render import Renderer, Request, completion_reserve
from .stats import Stats


class Job(NamedTuple):
    """One distinct request to send."""

    key: bytes
    body: bytes
    tokens: int  # prompt estimate + completion reserve: what the TPM clock and budget hold
    cost_estimate: float  # worst case: the answer runs to the completion reserve


async def pending_jobs(config: RunConfig, table: InputTable, renderer: Renderer,
                       journal: Journal, stats: Stats, price: Price | None
                       ) -> AsyncGenerator[list[Job], None]:
    """Yield the jobs this run must send, a batch of input rows at a time, in input order."""
    dedup = config.dedup_enabled
    reserve = completion_reserve(config)
    for start, rendered in rendered_batches(table, renderer):
        placed = place(rendered, start, journal.prior_counts([r.key for r in rendered]), dedup)
        journal.map_rows(placed.mapping)
        stats.copies += placed.copies
        keys = [key for _, key, _ in placed.firsts]
        sorted_out = sort_out(placed.firsts, journal.finished(keys), config.retry_failed,
                              journal.held(keys))
        stats.reused += sorted_out.reused
        for _, key, item in sorted_out.invalid:
            stats.invalid += 1
            stats.errors += 1
            journal.record(Outcome(key, ERROR, error=f"invalid row: {item.message}",
                                   error_kind=ROW_FATAL, finished_at=time.time()))
        jobs = [job_of(key, request, reserve, price) for _, key, request in sorted_out.send]
        stats.mapped += len(rendered)
        stats.to_send += len(jobs)
        yield jobs
    journal.flush()
    stats.producing_done = True


def job_of(key: bytes, request: Request, reserve: int, price: Price | None) -> Job:
    """A job with its worst-case cost: the answer runs to the reserve."""
    estimate = price.cost(request.tokens - reserve, reserve) if price is not None else 0.0
    return Job(key, request.body, request.tokens, estimate)
