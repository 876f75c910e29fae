"""The Ray engine behind the CLI (`--engine ray`): the driver plans, Ray Data's actors send.

    async with open_run(...) as run:
        await execute(run, RayBackend())   # chosen by `backends.choose_backend`

The driver runs the same plan as the local engine (`pending.pending_jobs`: resume, dedup,
occurrence keys, invalid rows and the row mapping all alike), because the output is one Parquet
file in input order that the driver rebuilds from the input and the journal (`write.py`). The
jobs it yields go into Ray's object store in blocks of BLOCK_ROWS; `--workers` sender actors
(`worker.SenderWorker`, in `map_batches`) settle them under the one limiter actor and commit to
the one ledger actor, which owns the journal while the cluster sends. When the dataset is done
the ledger closes the journal, the driver reads it again, and the run ends like a local one:
the same output, metadata, sidecar, summary and exit code.

A run with nothing to send never starts Ray. Ray itself: `--ray-address`, else `RAY_ADDRESS`,
else a local Ray started for the run and shut down after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchrun.errors import Interrupted, UsageError
from batchrun.journal.database import journal_path
from batchrun.ray import NO_RAY
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
WORKER_CPUS = 0.25  # whole-CPU actors would starve Ray Data's own tasks on a small machine
POLL_EVERY = 0.5  # seconds between reading the cluster's counters for the progress display
NODE_POLL = 0.02  # seconds between looks for a local Ray's raylet while it starts
NODE_WAIT = 10.0  # seconds spent looking at most; then Ray's own lookup waits its 30 s
NAMESPACE = "batchrun"  # the named actors of every run live here
JOB_SCHEMA = pa.schema(list(zip(JOB_COLUMNS, (pa.binary(), pa.binary(), pa.int64(), pa.float64()),
                                strict=True)))
log = logging.getLogger("batchrun")


class RayBackend:
    """Plan on the driver, send from Ray Data actors, commit through the ledger actor."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Send every pending job from the cluster; answers are in the journal when it returns."""
        connected = started = False
        tables: list[pa.Table] = []
        base = run.stats.counts()
        try:
            async for batch in jobs:
                if not batch:
                    continue
                if not connected:  # the first job to send: join (or start) Ray meanwhile
                    joining = asyncio.create_task(asyncio.to_thread(connect, run.config.ray_address))
                    connected = True
                tables.append(_job_table(batch))
            run.journal.flush()
            if tables:
                started = await joining
                blocks = list(_blocks(tables, run.config.workers))
                await _send_on_cluster(run, blocks, base)
        finally:
            if connected:
                if not started:
                    started = await joining  # (a stop while joining: leave Ray as we found it)
                run.journal.reload()  # the ledger actor wrote it meanwhile
            if started:  # Ray stops while the driver writes the output; the run waits for it
                run.finishing.append(asyncio.create_task(asyncio.to_thread(shut_down)))


def _blocks(tables: list[pa.Table], workers: int) -> Iterator[pa.Table]:
    """The jobs in blocks of at most BLOCK_ROWS, and enough of them to keep every worker busy."""
    jobs = pa.concat_tables(tables)
    size = max(1, min(BLOCK_ROWS, math.ceil(jobs.num_rows / (workers * BLOCKS_PER_WORKER))))
    for start in range(0, jobs.num_rows, size):
        yield jobs.slice(start, size)


async def _send_on_cluster(run: RunContext, blocks: list[pa.Table], base: Counts) -> None:
    import ray

    config = run.config
    ledger, limiter = start_actors(config, journal_path(config.output))
    ds = ray.data.from_blocks(blocks)  # the metadata is read here: no tasks to start
    ds = sending(ds, config, run.key, run.base_url, limiter, ledger, columns=None, answers=False)

    def consume() -> None:
        for _ in ds.iter_batches(batch_size=None):
            pass  # the answers are in the journal; the driver writes the output from it

    try:
        await drive(consume, ledger, limiter, run.stats, run.stopper, base)
    finally:
        _count(run.stats, base, await ledger.close.remote())


async def drive(work: Callable[[], None], ledger: Any, limiter: Any, stats: Stats,
                stopper: Stopper, base: Counts) -> None:
    """Run `work` (Ray Data consuming the sending dataset) on a thread while the driver's loop
    keeps the counters up to date and hears signals; then raise why the cluster stopped, if it
    did, or what failed."""
    stopper.when_stopping(lambda: _tell_stop(limiter, stopper))
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
    stop = await limiter.stopped.remote()
    if stop is not None:
        stopper.stop(stop_error(stop))  # the first reason wins: a signal here stays one
    elif failure:
        raise failure[0]


def _tell_stop(limiter: Any, stopper: Stopper) -> None:
    error = stopper.error
    if error is not None:
        limiter.stop.remote(error.message, isinstance(error, Interrupted))


def _count(stats: Stats, base: Counts, totals: Counts) -> None:
    """The run's counters: the driver's own (its plan) plus what the workers reported."""
    stats.set_counts(base.plus(totals))


def connect(address: str | None) -> bool:
    """Join Ray (`address`, else RAY_ADDRESS, else a local Ray); True if this call started it.
    Ray Data's import (~1 s) overlaps Ray's start, which mostly waits for its processes."""
    try:
        import ray
    except ImportError:
        raise UsageError(NO_RAY) from None
    if ray.is_initialized():
        return False
    cluster = address or os.environ.get("RAY_ADDRESS")
    if not cluster:
        # A local Ray for this run. Its raylet connects to its own object store as both start:
        # missed once, it tries again after raylet_client_connect_timeout_milliseconds (1 s),
        # a second added to half the starts measured. The same ten-second budget, tried every
        # 50 ms; the raylet and its workers inherit it, and a user's own setting wins.
        os.environ.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "50")
        os.environ.setdefault("RAY_raylet_client_num_connect_attempts", "200")
    with concurrent.futures.ThreadPoolExecutor(1, "batchrun-ray-data") as pool:
        importing = pool.submit(quiet)
        try:
            with contextlib.nullcontext() if cluster else _prompt_node_lookup():
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # Ray's ways of saying "no"
            where = cluster or "a local Ray"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot join the Ray cluster at {where} ({first}); check "
                             "--ray-address or RAY_ADDRESS, or leave both unset for a local "
                             "Ray") from None
        try:
            importing.result()
        except ImportError:
            ray.shutdown()
            raise UsageError(NO_RAY) from None
    return True


@contextlib.contextmanager
def _prompt_node_lookup() -> Iterator[None]:
    """While a local Ray starts: its driver finds the new raylet within 20 ms of it registering.

    `ray.init` asks the GCS for the raylet it just started through a call that sleeps a whole
    second between tries (GlobalStateAccessor::GetNode), and the raylet registers only once its
    agents are up, 1.5-2 s in: the start waited for the next whole second, 0.4 s on average. The
    GCS's node table is read every 20 ms instead, and Ray's own lookup then finds the node at
    once. Anything unexpected (a Ray that changed) leaves Ray's lookup to do it all, as before.
    """
    try:
        from ray._private import services as ray_services
        from ray._private import state as ray_state
        services: Any = ray_services  # Ray's internals: untyped
        state: Any = ray_state
        original = services.get_node
    except (ImportError, AttributeError):
        yield
        return

    def get_node(gcs_address: str, node_id: str) -> Any:
        try:
            _await_node(state.GlobalState(), services._get_gcs_client_options(gcs_address), node_id)
        except Exception:  # noqa: BLE001  (Ray's own lookup below decides, as before)
            log.debug("could not look the new raylet up early", exc_info=True)
        return original(gcs_address, node_id)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def _await_node(table: Any, options: Any, node_id: str, wait: float = NODE_WAIT) -> bool:
    """Whether the GCS's node table shows `node_id` alive within `wait` (read NODE_POLL apart)."""
    table._initialize_global_state(options)
    try:
        deadline = time.monotonic() + wait
        while True:
            nodes = table.node_table()
            odd = next((node for node in nodes if "NodeID" not in node), None)
            if odd is not None:
                raise LookupError(f"a node table unlike Ray's: {sorted(odd)}")
            if any(node["NodeID"] == node_id and node.get("Alive") for node in nodes):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(NODE_POLL)
    finally:
        table.disconnect()


def shut_down() -> None:
    """Leave Ray; a local Ray this run started stops with it.

    Ray stops its GCS before its autoscaler monitor, whose SIGTERM handler then waits on the
    stopped GCS until Ray's one-second grace runs out: a second of every run's end. A local Ray
    started for one run has nothing for the monitor to keep, so it is killed first. Joined to a
    running cluster, this process started no monitor, and none is killed.
    """
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    if node is not None and getattr(node, "head", False):
        try:
            node.kill_monitor(check_alive=False)
        except Exception:  # noqa: BLE001  (a Ray that changed: the slow end, as before)
            log.debug("could not stop Ray's monitor early", exc_info=True)
    ray.shutdown()


def quiet() -> None:
    """No progress bars or execution chatter from Ray Data: batchrun has its own display."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def start_actors(config: RunConfig, journal: Path | None,
                 track: bool = False) -> tuple[Any, Any]:
    """The run's ledger actor (on this node: the journal is on its disk) and limiter actor;
    `track`: the ledger keeps the keys it is asked about, for a dataset output's sidecar."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tag = actor_tag(journal)
    ledger = ray.remote(Ledger).options(
        num_cpus=0, scheduling_strategy=here, name=f"batchrun-ledger-{tag}", namespace=NAMESPACE,
    ).remote(str(journal) if journal is not None else None, track)
    limiter = ray.remote(LimiterCore).options(
        num_cpus=0, name=f"batchrun-limiter-{tag}", namespace=NAMESPACE,
    ).remote(config.rpm, config.tpm)
    return ledger, limiter


def actor_tag(journal: Path | None) -> str:
    """Names of one run's actors: this process and its journal, so that runs never share one."""
    place = str(journal.resolve()) if journal is not None else "dataset"
    digest = hashlib.blake2b(place.encode(), digest_size=6).hexdigest()
    return f"{os.getpid()}-{digest}-{id(object()):x}"


def sending(ds: Any, config: RunConfig, key: Secret | None, base_url: str, limiter: Any,
            ledger: Any, columns: list[str] | None, answers: bool) -> Any:
    """`ds` with the sender actors mapped over it (`--workers` async actors on WORKER_CPUS)."""
    import ray.data

    return ds.map_batches(
        SenderWorker,
        fn_constructor_kwargs={
            "config": config, "key": key, "base_url": base_url, "limiter": limiter,
            "ledger": ledger, "columns": columns, "answers": answers,
        },
        batch_size=None if columns is None else BLOCK_ROWS,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=WORKER_CPUS,
    )


def _job_table(jobs: list[Job]) -> pa.Table:
    columns = list(zip(*jobs, strict=True))
    return pa.Table.from_arrays([pa.array(values, f.type) for values, f in zip(
        columns, JOB_SCHEMA, strict=True)], schema=JOB_SCHEMA)


