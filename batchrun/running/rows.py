"""Rows: which input rows a run sends now (after resume and dedup), as jobs any backend iterates.

One selection loop (`select`) renders a batch of input rows, places it (dedup and occurrence keys,
against the rows placed before it) and sorts it out against what earlier runs left (settled,
failed to retry, held in live Batch API batches). Its three callers differ only in what they ask
and keep: the engine's producer (`pending_jobs`) asks the run's journal and records the mapping
there; `batchrun plan` asks a read-only journal (or nothing) and records nothing; the Batch API
backend re-renders rows it must send again and asks nothing. So a plan counts exactly the requests
a run sends: same rendering, same keys, same resume rules. Invalid rows are recorded as row errors
here, without touching the network.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import pyarrow as pa

from batchrun.data.read import BATCH_ROWS, InputTable, open_input
from batchrun.errors import UsageError
from batchrun.journal.cache import Hit, Known
from batchrun.journal.database import Journal, resend
from batchrun.protocol.outcome import ERROR, OK, ROW_FATAL, Outcome
from batchrun.protocol.render import (
    BodyRenderer,
    Invalid,
    Renderer,
    Request,
    alone_key,
    completion_reserve,
    occurrence_key,
)
from batchrun.running.bridge import Bridge
from batchrun.running.output import RESULT_NAMES
from batchrun.running.seen import Seen
from batchrun.running.stats import Stats
from batchrun.settings.config import RunConfig
from batchrun.settings.endpoints import in_try_order
from batchrun.settings.prices import Price

Rendered = Request | Invalid
Mapped = tuple[int, bytes, bytes, int]  # (input row, base hash, key, 1 if a dedup copy)


def open_job(config: RunConfig) -> tuple[InputTable, Renderer]:
    """Open the input and build the renderer; every input and template mistake surfaces here."""
    table = open_input(config.input, config.encoding)
    renderer = (BodyRenderer(config, table.first_without_model) if table.format == "jsonl"
                else Renderer(config, table.columns))
    clash = sorted(set(table.columns) & {*RESULT_NAMES, *(("cached",) if config.cache else ()),
                                         *(("endpoint",) if config.endpoints else ())})
    if clash:
        raise UsageError(
            f"input column '{clash[0]}' has the name of an output column; rename it in the input"
        )
    table.check_text(renderer.needed)  # a Parquet's bad text fails here, before anything is sent
    return table, renderer


def render_batch(renderer: Renderer, batch: pa.RecordBatch | pa.Table) -> list[Rendered]:
    """Each row of one batch rendered (the Ray engine's workers render their blocks with it)."""
    needed = renderer.needed
    if not needed:
        return [renderer.render({}) for _ in range(batch.num_rows)]
    columns = [batch.column(name).to_pylist() for name in needed]
    return [renderer.render(dict(zip(needed, values, strict=True)))
            for values in zip(*columns, strict=True)]


# --- what the loop asks and keeps ---------------------------------------------------------


class Earlier(Protocol):
    """What earlier runs on the output left: their results, and the keys live batches hold.
    A `Journal` is one (the run's own, or `plan`'s read-only one)."""

    def finished(self, keys: Sequence[bytes]) -> Mapping[bytes, tuple[str, str | None]]: ...
    def held(self, keys: Sequence[bytes]) -> Set[bytes]: ...


class NothingEarlier:
    """No earlier run to ask: no journal yet, --fresh, or a re-render that only wants keys."""

    def finished(self, keys: Sequence[bytes]) -> Mapping[bytes, tuple[str, str | None]]:
        """Nothing is settled."""
        return {}

    def held(self, keys: Sequence[bytes]) -> Set[bytes]:
        """Nothing is held."""
        return frozenset()


class Answered(Protocol):
    """Answers paid for before, by any run (the shared cache, `--cache`): a request found there is
    answered from it instead of being sent."""

    def known(self, keys: Sequence[bytes]) -> Mapping[bytes, Known]: ...


# --- the loop -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """One batch of input rows, placed and sorted out by what this run does with them."""

    start: int  # index of the batch's first input row
    rendered: list[Rendered]  # every row of the batch, in order
    copies: int  # rows answered by an identical request of this run (dedup)
    send: list[tuple[int, bytes, Request]]  # (row, key, request) of each distinct request to send
    # Requests the shared cache answers: never sent, unless their answer is gone meanwhile.
    cached: list[tuple[int, bytes, Request, Known]]
    invalid: list[tuple[int, bytes, Invalid]]  # recorded as row errors without sending
    reused: int  # answered (or failed for good) in an earlier run
    held: int  # waiting in a live Batch API batch: collected there, never sent meanwhile
    # Several endpoints: a cached request's key in the cache and the endpoint it is kept for.
    cached_as: Mapping[bytes, tuple[bytes, str]] = field(default_factory=dict)


def select(table: InputTable, renderer: Renderer, config: RunConfig,
           earlier: Earlier | None = None, record: Callable[[list[Mapped]], None] | None = None,
           answered: Answered | None = None, rows: int = BATCH_ROWS) -> Iterator[Selection]:
    """The input, a batch at a time, in order: rendered, placed against the rows before it, sorted
    out against `earlier`, and what is left to send looked up in `answered` (the shared cache).
    `record` keeps each batch's mapping (the run's journal)."""
    earlier = earlier if earlier is not None else NothingEarlier()
    seen = Seen()  # the only thing kept from batch to batch: a compact set of keys
    dedup, retry_failed = config.dedup_enabled, config.retry_failed
    start = 0
    for batch in table.batches(rows):
        rendered = render_batch(renderer, batch)
        mapping, firsts, copies = _place(
            rendered, start, seen.place([item.key for item in rendered]), dedup)
        if record is not None:
            record(mapping)
        keys = [key for _, key, _ in firsts]
        chosen = _sort_out(start, rendered, copies, firsts, earlier.finished(keys), retry_failed,
                           earlier.held(keys))
        if answered is not None and chosen.send:
            chosen = _look_up(chosen, answered, config)
        yield chosen
        start += len(rendered)


def _look_up(chosen: Selection, answered: Answered, config: RunConfig) -> Selection:
    """The requests to send that the shared cache answers, taken out of `send`. With several
    endpoints the cache knows a request by each endpoint's own key (`alone_key`): the first
    endpoint in try order with an answer gives it."""
    cached_as: dict[bytes, tuple[bytes, str]] = {}
    if config.endpoints:
        order = in_try_order(config.endpoints)
        names: dict[bytes, tuple[bytes, str]] = {}  # cache key -> (this run's key, endpoint)
        for _, key, request in chosen.send:
            for e in reversed(order):  # two endpoints alike share a key: the first in order wins
                names[alone_key(request.body, e.base_url, e.model)] = (key, e.name)
        found = answered.known(list(names))
        hits: dict[bytes, Known] = {}
        for e in order:
            for cache_key, hit in found.items():
                key, name = names[cache_key]
                if name == e.name and key not in hits:
                    hits[key] = hit
                    cached_as[key] = (cache_key, name)
    else:
        hits = dict(answered.known([key for _, key, _ in chosen.send]))
    if not hits:
        return chosen
    return replace(chosen, send=[s for s in chosen.send if s[1] not in hits],
                   cached=[(i, k, r, hits[k]) for i, k, r in chosen.send if k in hits],
                   cached_as=cached_as)


def _place(rendered: Sequence[Rendered], start: int, before: Sequence[int], dedup: bool
           ) -> tuple[list[Mapped], list[tuple[int, bytes, Rendered]], int]:
    """Key each row: identical requests share one key (dedup) or are numbered by occurrence.

    `before` counts, for each row, the rows placed before it with its base hash. Returns the
    mapping of every row, (row, key, rendered) of each distinct request, and the number of dedup
    copies.
    """
    mapping: list[Mapped] = []
    firsts: list[tuple[int, bytes, Rendered]] = []
    copies = 0
    for idx, item, seen in zip(range(start, start + len(rendered)), rendered, before, strict=True):
        base = item.key
        if not seen:  # the usual row: its request is new
            mapping.append((idx, base, base, 0))
            firsts.append((idx, base, item))
        elif dedup or isinstance(item, Invalid):
            mapping.append((idx, base, base, 1))
            copies += 1
        else:
            key = occurrence_key(base, seen)
            mapping.append((idx, base, key, 0))
            firsts.append((idx, key, item))
    return mapping, firsts, copies


def _sort_out(start: int, rendered: list[Rendered], copies: int,
              firsts: Sequence[tuple[int, bytes, Rendered]],
              done: Mapping[bytes, tuple[str, str | None]], retry_failed: bool,
              held: Set[bytes]) -> Selection:
    """Skip what an earlier run settled or a live batch holds; split the rest into requests to
    send and invalid rows."""
    send: list[tuple[int, bytes, Request]] = []
    invalid: list[tuple[int, bytes, Invalid]] = []
    reused = waiting = 0
    if not done and not held:  # nothing earlier (a first run): every request is new
        for first in firsts:
            (invalid if isinstance(first[2], Invalid) else send).append(first)  # type: ignore[arg-type]
        return Selection(start, rendered, copies, send, [], invalid, reused, waiting)
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
    return Selection(start, rendered, copies, send, [], invalid, reused, waiting)


# --- the engine's producer ----------------------------------------------------------------


class Job(NamedTuple):
    """One distinct request to send."""

    key: bytes
    body: bytes
    tokens: int  # prompt estimate + completion reserve: what the TPM clock and budget hold
    cost_estimate: float  # worst case: the answer runs to the completion reserve


async def pending_jobs(config: RunConfig, table: InputTable, renderer: Renderer,
                       journal: Journal, stats: Stats, price: Price | None
                       ) -> AsyncGenerator[list[Job], None]:
    """Yield the jobs this run must send, a batch of input rows at a time, in input order; a
    request the shared cache (the journal's, with --cache) holds is answered from it here."""
    reserve = completion_reserve(config)
    cache = journal.cache
    bridge = Bridge.of(config, journal)  # one endpoint and several: each other's answers count
    for chosen in select(table, renderer, config, journal, journal.map_rows, cache):
        stats.copies += chosen.copies
        stats.reused += chosen.reused
        if bridge is not None and chosen.send:
            found = bridge.lookup(chosen.send)
            if found:
                for outcome in found.values():
                    journal.record(outcome)
                stats.reused += len(found)
                chosen = replace(chosen, send=[s for s in chosen.send if s[1] not in found])
        for _, key, item in chosen.invalid:
            stats.invalid += 1
            stats.errors += 1
            journal.record(Outcome(key, ERROR, error=f"invalid row: {item.message}",
                                   error_kind=ROW_FATAL, finished_at=time.time()))
        send = chosen.send
        if chosen.cached:
            assert cache is not None
            kept = chosen.cached_as
            gone = set(journal.record_cached([key for _, key, _, _ in chosen.cached],
                                             0.0 if price is not None else None, time.time(),
                                             kept))
            cache.touch([kept[key][0] if kept else key for _, key, _, known in chosen.cached
                         if known.stale and key not in gone])
            stats.cached += len(chosen.cached) - len(gone)
            if gone:  # pruned by another run since it was looked up: sent after all
                send = [*send, *((i, k, r) for i, k, r, _ in chosen.cached if k in gone)]
        jobs = [job_of(key, request, reserve, price) for _, key, request in send]
        stats.mapped += len(chosen.rendered)
        stats.to_send += len(jobs)
        yield jobs
    journal.flush()
    stats.producing_done = True


def from_cache(key: bytes, hit: Hit, cost: float | None, now: float) -> Outcome:
    """A request answered from the shared cache: the answer as first paid for, with none of its
    usage (this run paid nothing: 0 tokens, cost 0 and 0 attempts, as a dedup copy shows). What
    `journal.cache.RECORD_HIT` copies inside SQLite for a run; this for the Ray ledger."""
    return Outcome(key, OK, response=hit.response, finish_reason=hit.finish_reason,
                   prompt_tokens=0, completion_tokens=0, total_tokens=0, attempts=0,
                   model=hit.model, response_id=hit.response_id, cost_usd=cost,
                   parsed=hit.parsed, finished_at=now)


def job_of(key: bytes, request: Request, reserve: int, price: Price | None) -> Job:
    """A job with its worst-case cost: the answer runs to the reserve."""
    estimate = price.cost(request.tokens - reserve, reserve) if price is not None else 0.0
    return Job(key, request.body, request.tokens, estimate)
