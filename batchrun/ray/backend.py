"""The Ray engine behind the CLI (`--engine ray`): the driver plans, Ray Data's actors send.

    async with open_run(...) as run:
        await execute(run, RayBackend())   # chosen by `backends.choose_backend`

The driver runs the same plan as the local engine (`running.rows.pending_jobs`: resume, dedup,
occurrence keys, invalid rows and the row mapping all alike), because the output is one Parquet
file in input order that the driver rebuilds from the input and the journal (`running.output`). The
jobs it yields go into Ray's object store in blocks of BLOCK_ROWS; `--workers` sender actors
(`worker.SenderWorker`, in `map_batches`) settle them under the one limiter actor and commit to
the one ledger actor, which owns the journal while the cluster sends. When the dataset is done
the ledger closes the journal, the driver reads it again, and the run ends like a local one:
the same output, metadata, sidecar, summary and exit code.

With several endpoints (`[[endpoints]]`, `--fallback-model`) there is one limiter actor per
endpoint, each with that endpoint's limits (its `rpm`/`tpm` are its totals across the cluster),
and every worker routes its rows among the endpoints as the local pool does (`pool.WorkerPool`);
the driver reports each endpoint that retires, as the local engine does.

A run with nothing to send never starts Ray. Ray itself: `--ray-address`, else `RAY_ADDRESS`,
else a local Ray started for the run and stopped after it, all through Ray's public API
(`ray.init`, `ray.shutdown`); what joining changes in this process is set back when it leaves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchrun.errors import Interrupted, UsageError
from batchrun.journal.database import journal_path
from batchrun.ray.install import load
from batchrun.ray.ledger import Ledger
from batchrun.ray.limits import LimiterCore, stop_error
from batchrun.ray.worker import JOB_COLUMNS, SenderWorker
from batchrun.running.context import RunContext
from batchrun.running.rows import Job
from batchrun.running.stats import Counts, Stats
from batchrun.running.stopping import Stopper
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret

BLOCK_ROWS = 256  # jobs per block at most: what a dead worker's block redoes is checked, not re-sent
BLOCKS_PER_WORKER = 4  # at least: a worker never waits for a block while another has several
# The sender actors wait on the network; a CPU held by each would starve Ray Data's own tasks
# (reads, writes, a user's filters), and so would any fraction of one on one-CPU nodes: what is
# left on each node is less than the whole CPU a task asks for, and the run waits forever.
WORKER_CPUS = 0.0
# What they do hold is memory: a sender actor is a Python process with Ray, pyarrow and aiohttp,
# about 210 MiB resident. Asking for it is also what spreads them over the nodes: Ray's SPREAD
# places actors that ask for nothing wherever it likes (both on one node, half the time).
WORKER_MEMORY = 256 * 1024 * 1024
POLL_EVERY = 0.5  # seconds between reading the cluster's counters for the progress display
# Seconds to open a TCP connection to a cluster's address before joining it: Ray itself retries an
# address that takes no connection for minutes before it says so.
REACH_TIMEOUT = 5.0
NAMESPACE = "batchrun"  # the named actors of every run live here
JOB_SCHEMA = pa.schema(list(zip(JOB_COLUMNS, (pa.binary(), pa.binary(), pa.int64(), pa.float64()),
                                strict=True)))
log = logging.getLogger("batchrun")


class RayBackend:
    """Plan on the driver, send from Ray Data actors, commit through the ledger actor."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Send every pending job from the cluster; answers are in the journal when it returns."""
        joining: asyncio.Task[Callable[[], None] | None] | None = None
        tables: list[pa.Table] = []
        base = run.stats.counts()
        try:
            async for batch in jobs:
                if not batch:
                    continue
                if joining is None:  # the first job to send: join (or start) Ray meanwhile
                    joining = asyncio.create_task(asyncio.to_thread(connect, run.config.ray_address))
                tables.append(_job_table(batch))
            run.journal.flush()
            if joining is not None:
                await joining
                blocks = list(_blocks(tables, run.config.workers))
                await _send_on_cluster(run, blocks, base)
        finally:
            if joining is not None:
                leave = await joining  # (a stop while joining: leave Ray as we found it)
                run.journal.reload()  # the ledger actor wrote it meanwhile
                if leave is not None:
                    # Ray is left while the driver writes the output; the run waits for it.
                    run.finishing.append(asyncio.create_task(asyncio.to_thread(leave)))


def _blocks(tables: list[pa.Table], workers: int) -> Iterator[pa.Table]:
    """The jobs in blocks of at most BLOCK_ROWS, and enough of them to keep every worker busy."""
    jobs = pa.concat_tables(tables)
    size = max(1, min(BLOCK_ROWS, math.ceil(jobs.num_rows / (workers * BLOCKS_PER_WORKER))))
    for start in range(0, jobs.num_rows, size):
        yield jobs.slice(start, size)


async def _send_on_cluster(run: RunContext, blocks: list[pa.Table], base: Counts) -> None:
    import ray

    config = run.config
    ledger, limiters = start_actors(config, journal_path(config.output))
    ds = ray.data.from_blocks(blocks)  # the metadata is read here: no tasks to start
    ds = sending(ds, config, run.key, run.base_url, limiters, ledger, columns=None,
                 answers=False, keys=run.keys)
    watch = EndpointWatch(config, limiters, ledger, run.stats, run.event)

    def consume() -> None:
        for _ in ds.iter_batches(batch_size=None):
            pass  # the answers are in the journal; the driver writes the output from it

    try:
        await drive(consume, ledger, limiters, run.stats, run.stopper, base, watch.check)
    finally:
        _count(run.stats, base, await ledger.close.remote())
        await watch.check()


class EndpointWatch:
    """The driver's view of each endpoint of a run with several: its counters, summed over the
    workers (`run.stats.endpoints`: the timeline, the summary's and metadata's per-endpoint
    lines), and each endpoint that retired (in some worker, so in every one), told once with
    the warning line and `endpoint_retired` event the local pool gives."""

    def __init__(self, config: RunConfig, limiters: list[Any], ledger: Any, stats: Stats,
                 event: Callable[..., None]) -> None:
        """`stats`: the run's counters; `event(name, **data)` tells the display and the log."""
        self._endpoints = list(zip(config.endpoints, limiters, strict=False))
        self._ledger = ledger
        self._stats = stats
        self._event = event
        self._told: set[str] = set()
        for endpoint in config.endpoints:
            stats.endpoints[endpoint.name] = Stats(limits=(endpoint.rpm, endpoint.tpm))

    async def check(self) -> None:
        """Bring the endpoints' counters up to date; tell what retired since the last check."""
        if not self._endpoints:
            return
        for name, counts in (await self._ledger.parts.remote()).items():
            self._stats.endpoints[name].set_counts(counts)
        for endpoint, limiter in self._endpoints:
            if endpoint.name in self._told:
                continue
            reason = await limiter.retired.remote()
            if reason is not None:
                self._told.add(endpoint.name)
                log.warning("endpoint %s retired for the rest of the run: %s", endpoint.name,
                            reason)
                self._event("endpoint_retired", endpoint=endpoint.name, reason=reason)


async def drive(work: Callable[[], None], ledger: Any, limiters: list[Any], stats: Stats,
                stopper: Stopper, base: Counts,
                poll: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run `work` (Ray Data consuming the sending dataset) on a thread while the driver's loop
    keeps the counters up to date (and runs `poll`) and hears signals; then raise why the
    cluster stopped, if it did, or what failed."""
    stopper.when_stopping(lambda: _tell_stop(limiters, stopper))
    failure: list[BaseException] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # judged on the loop: a stop, or a real failure
            failure.append(exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the run was cancelled
                loop.call_soon_threadsafe(done.set)

    threading.Thread(target=target, name="batchrun-ray", daemon=True).start()
    while not done.is_set():  # the counters every POLL_EVERY, and on at once when work ends
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), POLL_EVERY)
        _count(stats, base, await ledger.totals.remote())
        if poll is not None:
            await poll()
    stops = [await limiter.stopped.remote() for limiter in limiters]
    stop = next((s for s in stops if s is not None), None)
    if stop is not None:
        stopper.stop(stop_error(stop))  # the first reason wins: a signal here stays one
    elif failure:
        raise failure[0]


def _tell_stop(limiters: list[Any], stopper: Stopper) -> None:
    error = stopper.error
    if error is not None:
        for limiter in limiters:  # each endpoint's, with several: every worker leases from one
            limiter.stop.remote(error.message, isinstance(error, Interrupted))


def _count(stats: Stats, base: Counts, totals: Counts) -> None:
    """The run's counters: the driver's own (its plan) plus what the workers reported."""
    stats.set_counts(base.plus(totals))


def connect(address: str | None) -> Callable[[], None] | None:
    """Join Ray (`address`, else RAY_ADDRESS, else a local Ray started for the run and stopped
    with it). Returns the call that leaves Ray again and sets back what joining changed in this
    process (Ray's log levels, Ray Data's display), or None when this process was in Ray already:
    then it stays in, as its user set it up. Ray Data's import (~1 s) overlaps Ray's start."""
    ray = load()
    if ray.is_initialized():
        return None
    cluster = address or os.environ.get("RAY_ADDRESS")
    unreachable = _unreachable(cluster) if cluster else None
    if unreachable is not None:
        raise _cannot_join(cluster or "", unreachable)
    restore = [_quiet_logger("ray")]  # ray.init's own lines, before its first
    with concurrent.futures.ThreadPoolExecutor(1, "batchrun-ray-data") as pool:
        importing = pool.submit(_quiet_data)
        try:
            # "local", not None: without an address Ray would join a cluster some earlier
            # `ray start` on this machine left its address for, not start one for the run.
            ray.init(address=cluster or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # Ray's ways of saying "no"
            with contextlib.suppress(UsageError):  # (Ray Data missing too: this line says more)
                restore.append(importing.result())
            _undo(restore)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _cannot_join(cluster or "a local Ray", first) from None
        try:
            restore.append(importing.result())
        except UsageError:  # Ray without its Data library
            ray.shutdown()
            _undo(restore)
            raise

    def leave() -> None:
        ray.shutdown()
        _undo(restore)

    return leave


def _cannot_join(where: str, why: str) -> UsageError:
    return UsageError(f"cannot join the Ray cluster at {where} ({why}); check --ray-address or "
                      "RAY_ADDRESS (and, for a cluster with token authentication, "
                      "RAY_AUTH_MODE=token and its token), or leave both unset for a local Ray")


def _unreachable(cluster: str) -> str | None:
    """Why a cluster's address (host:port, or ray://host:port) takes no TCP connection, or None:
    it does, or it is not an address to try (`auto`, `local`)."""
    where = cluster.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if not colon or not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT):
            return None
    except OSError as exc:
        return f"no connection to {where}: {exc.strerror or str(exc) or type(exc).__name__}"


def _quiet_logger(name: str) -> Callable[[], None]:
    """Only errors from the logger `name` (batchrun has its own display); the call that sets
    its level back."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    return lambda: logger.setLevel(level)


def _quiet_data() -> Callable[[], None]:
    """Ray Data imported, without progress bars or execution chatter for this process; the call
    that sets them back."""
    data = load("ray.data")
    context = data.DataContext.get_current()
    shown = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = False
    logger = _quiet_logger("ray.data")  # after the import, which sets this logger up

    def restore() -> None:
        context.enable_progress_bars, context.print_on_execution_start = shown
        logger()

    return restore


def _undo(restore: list[Callable[[], None]]) -> None:
    for undo in reversed(restore):
        undo()


def start_actors(config: RunConfig, journal: Path | None,
                 track: bool = False) -> tuple[Any, list[Any]]:
    """The run's ledger actor (on this node: the journal is on its disk) and limiter actors:
    the run's one, or one per endpoint, each with that endpoint's limits; `track`: the ledger
    keeps the keys it is asked about, for a dataset output's sidecar."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tag = actor_tag()
    ledger = ray.remote(Ledger).options(
        num_cpus=0, scheduling_strategy=here, name=f"batchrun-ledger-{tag}", namespace=NAMESPACE,
    ).remote(str(journal) if journal is not None else None, track,
             str(config.cache) if config.cache is not None else None, bool(config.endpoints))
    paces = [(e.rpm, e.tpm) for e in config.endpoints] or [(config.rpm, config.tpm)]
    limiters = [ray.remote(LimiterCore).options(
        num_cpus=0, name=f"batchrun-limiter-{tag}" + (f"-{i}" if config.endpoints else ""),
        namespace=NAMESPACE,
    ).remote(rpm, tpm) for i, (rpm, tpm) in enumerate(paces)]
    return ledger, limiters


def actor_tag() -> str:
    """Names of one run's actors: this process's id, to find a driver's actors, and a fresh
    uuid4, so that no two runs share one, nor two datasets of one driver."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def sending(ds: Any, config: RunConfig, key: Secret | None, base_url: str,
            limiters: list[Any], ledger: Any, columns: list[str] | None, answers: bool,
            keys: Mapping[str, Secret | None] | None = None) -> Any:
    """`ds` with the sender actors mapped over it (`--workers` async actors, WORKER_CPUS and
    WORKER_MEMORY each); `keys`: each endpoint's key by name, with several."""
    import ray.data

    return ds.map_batches(
        SenderWorker,
        fn_constructor_kwargs={
            "config": config, "key": key, "base_url": base_url, "limiters": limiters,
            "ledger": ledger, "columns": columns, "answers": answers, "keys": dict(keys or {}),
        },
        batch_size=None if columns is None else BLOCK_ROWS,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=WORKER_CPUS,
        memory=WORKER_MEMORY,
    )


def _job_table(jobs: list[Job]) -> pa.Table:
    columns = list(zip(*jobs, strict=True))
    return pa.Table.from_arrays([pa.array(values, f.type) for values, f in zip(
        columns, JOB_SCHEMA, strict=True)], schema=JOB_SCHEMA)


