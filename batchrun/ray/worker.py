"""A sender actor of a Ray run: the local engine's sending core inside a Ray Data map_batches actor.

Each worker is an async actor with its own connections (`sending.connections`) and its own
`JobSender` (the same sending core as the local engine), sending up to its share of
`--concurrency` at once. Its limits are leased from the run's limiter actor
(`limits.LeasedLimits`) and its answers are committed through the ledger actor
(`ledger.RemoteCommit`) before they count. A run with several endpoints has one limiter actor
per endpoint, and each worker routes its rows among its own copies of the endpoints
(`pool.WorkerPool`).

A block comes in one of two shapes: jobs the driver planned (`key`, `body`, `tokens`,
`cost_estimate`: the CLI's runs), or a user's rows (`batchrun.ray.process`), which the worker
renders itself. Either way it first asks the ledger which keys are already answered, so a block
Ray Data redoes after a worker died sends only what was not committed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa

from batchrun.errors import Interrupted
from batchrun.journal.database import resend
from batchrun.protocol.outcome import ERROR, ROW_FATAL, Outcome
from batchrun.protocol.render import Invalid, Renderer, completion_reserve
from batchrun.protocol.structured import arrow_type, conform
from batchrun.ray.ledger import RemoteCommit
from batchrun.ray.limits import LeasedLimits
from batchrun.ray.pool import WorkerPool
from batchrun.running.output import DETAIL_FIELDS, ENDPOINT_FIELD, RESULT_FIELDS, _column
from batchrun.running.rows import Job, job_of, render_batch
from batchrun.running.stats import Stats
from batchrun.running.stopping import Stopper
from batchrun.sending.attempts import JobSender
from batchrun.sending.http import Sender, connections
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret
from batchrun.settings.prices import price_for

JOB_COLUMNS = ("key", "body", "tokens", "cost_estimate")
# Where each result column is in an Outcome tuple (the journal's column order).
_RESULT_AT = tuple(Outcome._fields.index(f.name) for f in RESULT_FIELDS)
_STATUS_AT = Outcome._fields.index("status")
_KIND_AT = Outcome._fields.index("error_kind")
_PARSED_AT = Outcome._fields.index("parsed")
_ENDPOINT_AT = Outcome._fields.index("endpoint")
_DETAILS_AT = tuple(Outcome._fields.index(f.name) for f in DETAIL_FIELDS)


def share(config: RunConfig) -> RunConfig:
    """One worker's part of the run's config: its share of the concurrency and the budgets.

    Budgets are split evenly rather than booked centrally: no worker can overspend, at the price
    of a run stopping when the busiest worker reaches its part.
    """
    n = config.workers
    return replace(
        config,
        concurrency=max(1, math.ceil(config.concurrency / n)),
        max_cost=config.max_cost / n if config.max_cost is not None else None,
        max_total_tokens=(max(1, config.max_total_tokens // n)
                          if config.max_total_tokens is not None else None),
    )


class SenderWorker:
    """The callable class Ray Data runs as a pool of `--workers` async actors."""

    def __init__(self, config: RunConfig, key: Secret | None, base_url: str,
                 limiters: Sequence[Any], ledger: Any, columns: Sequence[str] | None = None,
                 answers: bool = True, keys: Mapping[str, Secret | None] | None = None) -> None:
        """`limiters`: the run's limiter actor, or one per endpoint (in `config.endpoints`'
        order); `keys`: each endpoint's key by name (`key` is then None)."""
        self._config = share(config)
        self._key = key
        self._keys = keys or {}
        self._base_url = base_url
        self._limiters = list(limiters)
        self._ledger = ledger
        self._renderer = Renderer(config, columns) if columns is not None else None
        self._answers = answers  # False: return a row count only (the driver writes the output)
        self._price = price_for(config.model, config.price)
        self._stats = Stats()
        self._started = False
        self._sender: JobSender | None = None  # one endpoint's sending core
        self._pool: WorkerPool | None = None  # several endpoints'

    def _start(self) -> None:
        """The worker's session, limits and sending core, made on the actor's event loop (with
        several endpoints, each endpoint's: `pool.WorkerPool`)."""
        import ray

        config = self._config
        self._stopper = stopper = Stopper(lambda name, data: None)
        here = ray.get_runtime_context()
        worker, node = here.get_actor_id() or "driver", here.get_node_id()
        self._commits = RemoteCommit(self._ledger, self._stats)
        stopper.when_stopping(self._tell_stop)
        self._started = True
        if config.endpoints:
            self._pool = WorkerPool(config, self._keys, self._limiters, self._ledger,
                                    self._commits, self._stats, stopper, worker, node)
            return
        limits = LeasedLimits(self._limiters[0], config, stopper, worker, node)
        stopper.when_stopping(limits.close)
        self._connections = connections(self._base_url, config.concurrency)
        scrub = (self._key.reveal(),) if self._key else ()
        wire = Sender(self._connections, self._key, config.timeout, scrub=scrub)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._sender = JobSender(config, wire, limits, self._stats, stopper, self._price,
                                 lambda name, data: None, seats=self._slots)

    def _tell_stop(self) -> None:
        """The run stops: every limiter actor hears it (each endpoint's, with several), so
        every worker stops at its next lease, and the driver reads why."""
        error = self._stopper.error
        if error is not None:
            for limiter in self._limiters:
                limiter.stop.remote(error.message, isinstance(error, Interrupted))

    async def __call__(self, batch: pa.Table) -> pa.Table:
        """Settle every row of the block; the block with its result columns (or its row count)."""
        if not self._started:
            self._start()
        if self._renderer is None:
            jobs = [Job(*row) for row in zip(*(batch.column(c).to_pylist() for c in JOB_COLUMNS),
                                             strict=True)]
            keys = [job.key for job in jobs]
            results = await self._settle(jobs, [])
        else:
            rendered = render_batch(self._renderer, batch)
            keys = [item.key for item in rendered]
            results = await self._settle_rendered(rendered)
        error = self._stopper.error
        if error is not None and len(results) < len(set(keys)):
            raise error  # the run stopped: what is not answered stays pending in the journal
        if not self._answers:
            return pa.table({"rows": [batch.num_rows]})
        return _with_results(batch, keys, results, self._config)

    async def _settle_rendered(self, rendered: list[Any]) -> dict[bytes, tuple[Any, ...]]:
        reserve = completion_reserve(self._config)
        jobs, invalid, seen = [], [], set()
        for item in rendered:
            if item.key in seen:
                continue  # an identical request of this block: it shares the answer
            seen.add(item.key)
            if isinstance(item, Invalid):
                invalid.append(item)
            else:
                jobs.append(job_of(item.key, item, reserve, self._price))
        return await self._settle(jobs, invalid)

    async def _settle(self, jobs: list[Job], invalid: list[Invalid]) -> dict[bytes, tuple[Any, ...]]:
        """Answers for every key: from the journal, or sent now and committed."""
        keys = [job.key for job in jobs] + [item.key for item in invalid]
        found: dict[bytes, tuple[Any, ...]] = await self._ledger.lookup.remote(keys)
        retry_failed = self._config.retry_failed
        results = {key: row for key, row in found.items()
                   if not resend(row[_STATUS_AT], row[_KIND_AT], retry_failed)}
        pending = [job for job in jobs if job.key not in results]
        if self._pool is not None:
            work = [self._pool.settle(pending, results)] if pending else []
        else:
            work = [self._send(job, results) for job in pending]
        for item in invalid:
            if item.key not in results:
                self._stats.invalid += 1
                self._stats.errors += 1
                work.append(self._keep(Outcome(
                    item.key, ERROR, error=f"invalid row: {item.message}", error_kind=ROW_FATAL,
                    finished_at=time.time()), results))
        await asyncio.gather(*work)
        return results

    async def _send(self, job: Job, results: dict[bytes, tuple[Any, ...]]) -> None:
        async with self._slots:
            if self._stopper.stopping:
                return
            assert self._sender is not None
            outcome = await self._sender.settle(job)
            if outcome is not None:
                # Durable before this slot sends again: a dead worker pays twice only what was
                # in flight.
                await self._keep(outcome, results)

    async def _keep(self, outcome: Outcome, results: dict[bytes, tuple[Any, ...]]) -> None:
        await self._commits.commit(outcome)
        results[outcome.key] = tuple(outcome)


def _with_results(batch: pa.Table, keys: list[bytes], results: dict[bytes, tuple[Any, ...]],
                  config: RunConfig) -> pa.Table:
    """The block with the result columns of the output added, row by row.

    Rows of one block that share a request show its usage once: the totals are what was billed.
    The columns: RESULT_FIELDS, `parsed` (structured answers), `endpoint` (a run with endpoints),
    then the usage details, as the local engine's output has them.
    """
    rows: list[tuple[Any, ...]] = []
    shown: set[bytes] = set()
    for key in keys:
        row = results[key]
        values = [row[i] for i in _RESULT_AT]
        details = [row[i] for i in _DETAILS_AT]
        if key in shown:
            values[2:5] = [0 * v if v is not None else None for v in values[2:5]]
            values[7] = 0
            values[11] = 0 * values[11] if values[11] is not None else None
            details = [0 * v if v is not None else None for v in details]
        shown.add(key)
        rows.append((*values, row[_PARSED_AT], row[_ENDPOINT_AT], *details))
    width = len(RESULT_FIELDS) + 2 + len(DETAIL_FIELDS)
    columns = list(zip(*rows, strict=True)) if rows else [()] * width
    table = batch
    for column, field in zip(columns, RESULT_FIELDS, strict=False):
        table = table.append_column(field, _column(column, field.type))
    if config.response_format != "text":
        parsed = columns[len(RESULT_FIELDS)]
        if config.schema is not None:  # typed by the schema: every block agrees on the type
            kind = arrow_type(config.schema)
            import orjson

            typed = [conform(orjson.loads(p), kind) if p else None for p in parsed]
            table = table.append_column(pa.field("parsed", kind), pa.array(typed, kind))
        else:  # json_object: blocks could infer different types; the JSON text is kept
            table = table.append_column(pa.field("parsed", pa.string()),
                                        _column(parsed, pa.string()))
    if config.endpoints:
        table = table.append_column(ENDPOINT_FIELD,
                                    _column(columns[len(RESULT_FIELDS) + 1], pa.string()))
    for column, field in zip(columns[len(RESULT_FIELDS) + 2:], DETAIL_FIELDS, strict=True):
        table = table.append_column(field, _column(column, field.type))
    return table
