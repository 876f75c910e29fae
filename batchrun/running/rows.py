"""Rows: which input rows a run sends now (after resume and dedup), as jobs any backend iterates.

One selection loop: the engine's producer (`pending_jobs`), `batchrun plan` and the Batch API
backend share `rendered_batches`, `place` and `sort_out`, so a plan counts exactly the requests a run
sends: same rendering, same keys, same resume rules. Invalid rows are recorded as row errors here,
without touching the network.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from batchrun.data.read import BATCH_ROWS, InputTable, open_input
from batchrun.errors import UsageError
from batchrun.journal.database import Journal, resend
from batchrun.protocol.outcome import ERROR, ROW_FATAL, Outcome
from batchrun.protocol.render import (
    BodyRenderer,
    Invalid,
    Renderer,
    Request,
    completion_reserve,
    occurrence_key,
)
from batchrun.running.output import RESULT_NAMES
from batchrun.running.stats import Stats
from batchrun.settings.config import RunConfig
from batchrun.settings.prices import Price

Rendered = Request | Invalid


def open_job(config: RunConfig) -> tuple[InputTable, Renderer]:
    """Open the input and build the renderer; every input and template mistake surfaces here."""
    table = open_input(config.input, config.encoding)
    renderer = (BodyRenderer(config, table.first_without_model) if table.format == "jsonl"
                else Renderer(config, table.columns))
    clash = sorted(set(table.columns) & set(RESULT_NAMES))
    if clash:
        raise UsageError(
            f"input column '{clash[0]}' has the name of an output column; rename it in the input"
        )
    table.check_text(renderer.needed)  # a Parquet's bad text fails here, before anything is sent
    return table, renderer


def rendered_batches(table: InputTable, renderer: Renderer,
                     rows: int = BATCH_ROWS) -> Iterator[tuple[int, list[Rendered]]]:
    """(index of the first row, rendered rows) for each batch of the input, in order."""
    start = 0
    for batch in table.batches(rows):
        yield start, render_batch(renderer, batch)
        start += batch.num_rows


def render_batch(renderer: Renderer, batch: pa.RecordBatch | pa.Table) -> list[Rendered]:
    """Each row of one batch rendered (the Ray engine's workers render their blocks with it)."""
    needed = renderer.needed
    if not needed:
        return [renderer.render({}) for _ in range(batch.num_rows)]
    columns = [batch.column(name).to_pylist() for name in needed]
    return [renderer.render(dict(zip(needed, values, strict=True)))
            for values in zip(*columns, strict=True)]


@dataclass(frozen=True)
class Placed:
    """One batch placed against the rows before it: journal mapping and distinct requests."""

    mapping: list[tuple[int, bytes, bytes, int]]  # (idx, base, key, copy) per input row
    firsts: list[tuple[int, bytes, Rendered]]  # (idx, key, rendered) of each distinct request
    copies: int  # rows answered by an identical request of this run (dedup)


def place(rendered: Sequence[Rendered], start: int, prior: Mapping[bytes, int],
          dedup: bool) -> Placed:
    """Key each row: identical requests share one key (dedup) or are numbered by occurrence.

    `prior` counts, per base hash, the rows of this run placed before this batch.
    """
    in_batch: dict[bytes, int] = {}
    mapping: list[tuple[int, bytes, bytes, int]] = []
    firsts: list[tuple[int, bytes, Rendered]] = []
    copies = 0
    for i, item in enumerate(rendered):
        base = item.key
        seen = prior.get(base, 0) + in_batch.get(base, 0)
        in_batch[base] = in_batch.get(base, 0) + 1
        if dedup or isinstance(item, Invalid):
            key, copy = base, int(seen > 0)
        else:
            key, copy = occurrence_key(base, seen), 0
        mapping.append((start + i, base, key, copy))
        if copy:
            copies += 1
        else:
            firsts.append((start + i, key, item))
    return Placed(mapping, firsts, copies)


@dataclass(frozen=True)
class Sorted:
    """The distinct requests of a batch, sorted by what this run does with them."""

    send: list[tuple[int, bytes, Request]]
    invalid: list[tuple[int, bytes, Invalid]]  # recorded as row errors without sending
    reused: int  # answered (or failed for good) in an earlier run
    held: int = 0  # waiting in a live Batch API batch: collected there, never sent meanwhile


def sort_out(firsts: Sequence[tuple[int, bytes, Rendered]],
             done: Mapping[bytes, tuple[str, str | None]], retry_failed: bool,
             held: Set[bytes] = frozenset()) -> Sorted:
    """Skip what an earlier run settled or a live batch holds; split the rest into requests to
    send and invalid rows."""
    send: list[tuple[int, bytes, Request]] = []
    invalid: list[tuple[int, bytes, Invalid]] = []
    reused = waiting = 0
    for idx, key, item in firsts:
        earlier = done.get(key)
        if earlier and not resend(*earlier, retry_failed):
            reused += 1
        elif key in held:
            waiting += 1
        elif isinstance(item, Invalid):
            invalid.append((idx, key, item))
        else:
            send.append((idx, key, item))
    return Sorted(send, invalid, reused, waiting)


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
