"""The run's resources as one async context manager: output lock, journal, endpoint, stop switch.

    async with open_run(config, key, emit) as run:
        ...  # run.journal, run.stats, run.stopper, run.base_url

Leaving it waits for what a backend left finishing, closes the journal (committing what is
buffered) and lets the next run take the output, in that order, whatever happened inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchrun.data.locations import check_writable
from batchrun.data.read import InputTable
from batchrun.errors import JobStopped, UsageError, operating_error
from batchrun.journal.cache import Cache
from batchrun.journal.database import Journal, OutputLock, journal_path
from batchrun.protocol.render import Renderer
from batchrun.running.bridge import remember_endpoints
from batchrun.running.rows import open_job
from batchrun.running.stats import Stats
from batchrun.running.stopping import Emit, Stopper
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret, check_transport
from batchrun.settings.prices import Price, run_price

log = logging.getLogger("batchrun")


@dataclass(frozen=True)
class RunContext:
    """Everything a backend needs from the run, passed down explicitly."""

    config: RunConfig
    key: Secret | None
    table: InputTable
    renderer: Renderer
    journal: Journal
    base_url: str
    stats: Stats
    stopper: Stopper
    price: Price | None
    emit: Emit
    # What a backend left running when it delivered (a local Ray stopping while the output is
    # written): the run waits for it before it closes.
    finishing: list[asyncio.Task[None]] = field(default_factory=list)
    # Several endpoints: each one's key by endpoint name (`key` is then None).
    keys: Mapping[str, Secret | None] = field(default_factory=dict)

    def event(self, name: str, **data: Any) -> None:
        """Tell the progress display and the JSON log something happened."""
        self.emit(name, data)


@contextlib.asynccontextmanager
async def open_run(config: RunConfig, key: Secret | None, emit: Emit,
                   keys: Mapping[str, Secret | None] | None = None) -> AsyncIterator[RunContext]:
    """Open the input, take the output, open its journal and endpoint; close them all after.
    `keys`: each endpoint's key, by name, for a run with several (checked where resolved)."""
    check_transport(config, key)
    table, renderer = open_job(config)
    stats = Stats(total_rows=table.count_rows())
    try:
        config.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {config.output.parent}: "
                         f"{exc.strerror}") from None
    if config.output_url:  # a bucket that is missing or refuses writes fails before any send
        check_writable(config.output_url)
    lock = OutputLock(config.output)
    try:  # the first files the run writes: a folder it cannot write fails here, before any send
        lock.acquire()
    except OSError as exc:
        raise operating_error(exc, "write beside the output") from None
    cache: Cache | None = None
    try:
        # A cache that is not one, or of another version, is exit 2 before the journal is touched.
        cache = Cache(config.cache) if config.cache is not None else None
        if config.fresh:
            _refuse_forgetting_live_batches(config)
        try:
            journal = Journal(journal_path(config.output), fresh=config.fresh)
        except OSError as exc:
            raise operating_error(exc, "create the journal") from None
        if cache is not None:
            # Several endpoints: the pool keeps each answer under the key of the endpoint that
            # gave it (`sending.pool`), not under the journal's key, which names none.
            journal.attach_cache(cache, copy=not config.endpoints)
        try:
            _begin(journal, config, stats)
            async with _endpoint(config) as (base_url, config):
                run = RunContext(config, key, table, renderer, journal, base_url, stats,
                                 Stopper(emit), run_price(config.model, config.price, config.backend,
                                                        config.batch_price), emit,
                                 keys=keys or {})
                try:
                    yield run
                finally:
                    for task in run.finishing:
                        await task
        finally:
            _close(journal)  # its last answers go into the cache too
    finally:
        if cache is not None:
            cache.close()
        lock.release()


def _refuse_forgetting_live_batches(config: RunConfig) -> None:
    """--fresh deletes the journal: batches still live at the provider would be paid for and
    their rows sent (and paid for) again, with nothing left that knows of them."""
    from batchrun.journal.batches import BatchBook  # (the backends import this module)

    path = journal_path(config.output)
    if not path.exists():
        return
    try:
        journal = Journal(path, readonly=True)
    except UsageError:  # unreadable, or older than batches: it knows of none, and --fresh is
        return  # how to start over from it
    try:
        live = [sub.batch_id or sub.sub for sub in BatchBook(journal).live()]
    finally:
        journal.close()
    if live:
        shown = ", ".join(live[:3]) + (f" and {len(live) - 3} more" if len(live) > 3 else "")
        raise UsageError(
            f"--fresh would forget {len(live)} Batch API batch(es) still live at the provider "
            f"({shown}): cancel them first (batchrun cancel {config.output_name}), or run without "
            "--fresh to collect them"
        )


def _begin(journal: Journal, config: RunConfig, stats: Stats) -> None:
    if config.fresh:
        journal.discard_all()
    remember_endpoints(config, journal)  # a later run with one endpoint may take their answers
    journal.start_mapping()
    journal.set_meta(
        input=str(config.input), output=config.output_name, model=config.model,
        base_url=config.endpoint, total_rows=stats.total_rows, started_at=time.time(),
        pid=os.getpid(), finished_at=None, state="running", stop_reason=None,
        layout=output_layout(config),
    )


def output_layout(config: RunConfig) -> dict[str, Any]:
    """What `batchrun export` needs to lay the output out as the run would: the input (absolute,
    so export works from any folder), how it is read, and the columns the settings add."""
    where = config.input if isinstance(config.input, str) else str(Path(config.input).resolve())
    return {"input": where, "encoding": config.encoding, "id_column": config.id_column,
            "response_format": config.response_format,
            "schema": dict(config.schema) if config.schema is not None else None,
            "cache": config.cache is not None, "endpoints": bool(config.endpoints)}


def _close(journal: Journal) -> None:
    """Close the journal; one that cannot be written any more has already stopped the run."""
    try:
        journal.close()
    except JobStopped as exc:
        log.warning("journal not closed cleanly: %s", exc.message)


@contextlib.asynccontextmanager
async def _endpoint(config: RunConfig) -> AsyncIterator[tuple[str, RunConfig]]:
    """The base URL, and the config as sent with: the simulator preset without one starts an
    in-process simulator (one for every such endpoint of a run with several)."""
    local = config.provider == "simulator" and not config.base_url
    unplaced = [e for e in config.endpoints if e.provider == "simulator" and not e.base_url]
    if not local and not unplaced:
        yield config.base_url, config
        return
    from batchrun import sim  # aiohttp.web: imported only when the preset asks for it

    async with sim.running(sim.SimConfig(), "127.0.0.1", 0) as server:
        url = server.base_url
        endpoints = tuple(replace(e, base_url=url) if e in unplaced else e
                          for e in config.endpoints)
        yield (url if local else config.base_url), replace(config, endpoints=endpoints)
