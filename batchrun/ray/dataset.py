"""An output folder on the Ray engine: a Parquet dataset, one file per block, and the sidecar.

    batchrun run --input /lake/reviews/ --output /lake/summaries --engine ray --workers 8

This is the lake's way: Ray Data reads the input (a Parquet or CSV file, or a folder of them),
each sender actor renders its own block (`batchrun.ray.process`), and Ray Data writes the
answered blocks, one Parquet file each, into a temporary folder that replaces OUTPUT when every
block is written. No driver reads the rows: it only validates the job against the input's
columns, then keeps the counters and the stop switch. The journal is beside the folder, as for a
file (`OUTPUT.journal.sqlite`): a rerun sends only what is not answered, and `batchrun status`
reads it. The usage sidecar (`OUTPUT.usage.parquet`) counts every request the run used once, as
it was billed; in the rows, a request shared by rows of different blocks shows its usage in each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchrun.data.locations import usage_path
from batchrun.data.read import CSV_SUFFIXES
from batchrun.errors import BatchrunError, UsageError
from batchrun.journal.database import Journal, OutputLock, journal_path
from batchrun.journal.readback import UsageRow
from batchrun.protocol.render import Renderer
from batchrun.ray.backend import EndpointWatch, connect, drive, sending, start_actors
from batchrun.ray.install import load
from batchrun.running.output import RESULT_NAMES, _write_usage
from batchrun.running.stats import Counts, Stats
from batchrun.running.stopping import Stopper
from batchrun.running.summary import Display, Summary, build_summary, output_metadata
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret, check_transport, resolve_keys
from batchrun.settings.prices import price_for


async def run_folder(config: RunConfig, key: Secret | None, reporter: Display) -> Summary:
    """Read, send and write on the cluster; the summary of the run (a stop raises, with it)."""
    load("ray.data")  # exit 2 now if Ray or Ray Data is missing

    if not isinstance(config.input, Path):
        # Ray Data's read tasks would open the URL in worker processes, whose environment need
        # not hold the driver's AWS settings; refused before the lock, the journal or Ray.
        raise UsageError(f"input {config.input}: an output folder reads a local input; "
                         "write a .parquet output to read from object storage")
    check_transport(config, key)
    keys = resolve_keys(config)  # several endpoints: each one's key, for it alone
    if any(e.provider == "simulator" and not e.base_url for e in config.endpoints) or (
            config.provider == "simulator" and not config.base_url):
        raise UsageError("--engine ray with an output folder needs --base-url for the simulator "
                         "(a base_url for each simulator endpoint)")
    output = config.output
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(output)
    lock.acquire()
    leave = None
    try:
        Journal(journal_path(output), fresh=config.fresh).close()  # --fresh: start over
        leave = await asyncio.to_thread(connect, config.ray_address)
        ds = _read(config)
        columns = list(ds.schema().names)
        Renderer(config, columns)  # template and column mistakes: exit 2, nothing sent
        clash = sorted(set(columns) & {*RESULT_NAMES, *(("endpoint",) if config.endpoints else ())})
        if clash:
            raise UsageError(f"input column '{clash[0]}' has the name of an output column; "
                             "rename it in the input")
        return await _send(config, key, keys, reporter, ds, columns)
    finally:
        if leave is not None:
            await asyncio.to_thread(leave)
        lock.release()


async def _send(config: RunConfig, key: Secret | None, keys: Mapping[str, Secret | None],
                reporter: Display, ds: Any, columns: list[str]) -> Summary:
    output = config.output
    began = time.time()
    stats, stopper = Stats(), Stopper(reporter.event)
    ledger, limiters = start_actors(config, journal_path(output), track=True)
    answered = sending(ds, config, key, config.base_url, limiters, ledger, columns, answers=True,
                       keys=keys)
    watch = EndpointWatch(config, limiters, ledger, stats,
                          lambda name, **data: reporter.event(name, data))
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    watcher = asyncio.create_task(reporter.watch(stats))
    try:
        with stopper.signals():
            await drive(lambda: answered.write_parquet(str(tmp)), ledger, limiters, stats,
                        stopper, Counts(), watch.check)
        await watch.check()
        by_model = await ledger.usage.remote()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await ledger.close.remote()
    counts = _counts(by_model, _rows(tmp))
    stats.total_rows = counts["mapped"]
    priced = price_for(config.model, config.price) is not None
    if stopper.error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        error: BatchrunError = stopper.error
        partial = build_summary(counts, stats, time.time() - began, config, None, None,
                                priced=priced, stopped=error.message)
        error.summary = partial
        reporter.finish(partial, error.exit_code)
        raise error
    _replace(tmp, output)
    sidecar = usage_path(output)
    finished = time.time()
    summary = build_summary(counts, stats, finished - began, config, output, sidecar,
                            priced=priced)
    _write_usage(sidecar, by_model, output_metadata(summary, counts, config, began, finished),
                 endpoints=bool(config.endpoints))
    reporter.finish(summary)
    return summary


def _read(config: RunConfig) -> Any:
    """The input as a Ray Data dataset, read as the local engine reads it (CSV cells as text)."""
    import ray.data

    assert isinstance(config.input, Path)  # run_folder refused a URL
    path = str(config.input)
    if not config.input.exists():
        raise UsageError(f"input {path} does not exist")
    files = [config.input] if config.input.is_file() else sorted(
        p for p in config.input.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    suffixes = {p.suffix.lower() for p in files}
    if suffixes == {".parquet"}:
        return ray.data.read_parquet(path)
    if len(suffixes) == 1 and next(iter(suffixes)) in CSV_SUFFIXES:
        delimiter = CSV_SUFFIXES[next(iter(suffixes))]
        names = pacsv.open_csv(files[0], parse_options=pacsv.ParseOptions(
            delimiter=delimiter)).schema.names
        return ray.data.read_csv(
            path, file_extensions=None,
            read_options=pacsv.ReadOptions(encoding=config.encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False))
    raise UsageError(f"input {path}: an output folder needs Parquet or CSV input files, all of "
                     f"one kind (found {', '.join(sorted(suffixes)) or 'none'})")


def _rows(folder: Path) -> tuple[int, int, int]:
    """(rows, ok, error) of the written dataset, from its files' status columns."""
    total = ok = error = 0
    for file in sorted(folder.glob("*.parquet")):
        status = pq.read_table(file, columns=["status"]).column("status").to_pylist()
        total += len(status)
        ok += status.count("ok")
        error += status.count("error")
    return total, ok, error


def _counts(by_model: list[UsageRow], rows: tuple[int, int, int]) -> dict[str, Any]:
    """The summary's totals: rows from the written files, usage as the sidecar bills it."""
    total, ok, error = rows
    sums = {name: sum(getattr(row, name) or 0 for row in by_model)
            for name in ("requests", "prompt_tokens", "completion_tokens", "total_tokens",
                         "cost_usd")}
    details = {name: _known_sum([getattr(row, name) for row in by_model])
               for name in ("cached_tokens", "reasoning_tokens", "provider_cost")}
    distinct = sum(row.rows_ok + row.rows_error for row in by_model)
    return {"mapped": total, "ok": ok, "error": error, "attempts": sums["requests"],
            "prompt_tokens": sums["prompt_tokens"], "completion_tokens": sums["completion_tokens"],
            "total_tokens": sums["total_tokens"], "cost_usd": sums["cost_usd"],
            "copies": max(0, total - distinct), **details, "endpoints": _by_endpoint(by_model)}


def _by_endpoint(by_model: list[UsageRow]) -> dict[str, dict[str, Any]]:
    """Several endpoints: what the requests each one settled used, by name (the summary's and
    metadata's per-endpoint figures, as `journal.readback.counts` gives them locally)."""
    found: dict[str, dict[str, Any]] = {}
    for row in by_model:
        if row.endpoint is None:
            continue
        sums = found.setdefault(row.endpoint, {})
        for name, value in (("ok", row.rows_ok), ("error", row.rows_error),
                            ("attempts", row.requests), ("prompt_tokens", row.prompt_tokens),
                            ("completion_tokens", row.completion_tokens),
                            ("total_tokens", row.total_tokens), ("cost_usd", row.cost_usd),
                            ("cached_tokens", row.cached_tokens),
                            ("reasoning_tokens", row.reasoning_tokens),
                            ("provider_cost", row.provider_cost)):
            sums[name] = _known_sum([sums.get(name), value])
    return dict(sorted(found.items()))


def _known_sum(values: list[Any]) -> Any:
    """The sum of the values reported (None: none was)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _replace(tmp: Path, output: Path) -> None:
    """The new folder takes OUTPUT's place; an earlier one is removed only once it is whole."""
    old = output.with_name(f".{output.name}.{os.getpid()}.old")
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
