"""The Python API and the one place a run is driven end to end: execute, then write, then sum up.

    summary = batchrun.run(batchrun.build_config(Path("job.toml"), {}))
    frame = batchrun.run_dataframe(df, model="gpt-4o-mini", temperature=0)

Both work inside a running event loop (Jupyter) too: the run then gets a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from batchrun.backends import choose_backend
from batchrun.data.locations import OUTPUT_SUFFIXES, open_location
from batchrun.errors import BatchrunError, JobStopped, UsageError, operating_error
from batchrun.running.context import RunContext, open_run
from batchrun.running.execute import execute
from batchrun.running.output import ENDPOINT_FIELD, RESULT_NAMES, write_output
from batchrun.running.summary import Summary, build_summary, output_metadata
from batchrun.running.timeline import Sampler
from batchrun.settings.config import RunConfig, as_keywords, build_config
from batchrun.settings.endpoints import Endpoint
from batchrun.settings.keys import Secret, resolve_key, resolve_keys
from batchrun.views.progress import Reporter

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("batchrun")
_T = TypeVar("_T")


async def run_async(config: RunConfig, *, key: Secret | None = None,
                    reporter: Reporter | None = None) -> Summary:
    """Run a job to the end and write its output; a stop raises JobStopped/Interrupted, whose
    `summary` says what the run had done."""
    keys = _endpoint_keys(config)
    if key is None and not config.endpoints:
        key = resolve_key(config)
    if config.report:
        from batchrun.views.report import require_plotting

        require_plotting()
    reporter = reporter or Reporter.for_config(config)
    backend = choose_backend(config)
    if config.engine == "ray" and config.output.suffix not in OUTPUT_SUFFIXES:
        from batchrun.ray.dataset import run_folder  # a Parquet dataset: read and written by Ray Data

        return await run_folder(config, key, reporter)
    started = time.time()
    async with open_run(config, key, reporter.event, keys) as run:
        run.event("start", total_rows=run.stats.total_rows, input=str(config.input),
                  output=config.output_name, model=config.model, base_url=config.endpoint,
                  key_from=key.source if key is not None else None,
                  concurrency=config.concurrency, rpm=config.rpm, tpm=config.tpm,
                  **_endpoints_event(config.endpoints, keys))
        watcher = asyncio.create_task(reporter.watch(run.stats))
        timeline = asyncio.create_task(
            Sampler(run.stats, *_pool_limits(config)).keep(run.journal))
        try:
            try:
                await execute(run, backend)
            finally:
                await _stop_watching(watcher)  # the display is gone before anything else prints
                await _stop_watching(timeline, "timeline")  # its last sample is in the journal
        except BatchrunError as stop:
            with contextlib.suppress(BatchrunError):  # a journal that cannot be written stays
                run.journal.set_meta(exit_code=stop.exit_code)
            partial = _summary(run, run.journal.counts(), time.time() - started, stop.message)
            summary = dataclasses.replace(partial, report=_write_report(config))
            reporter.finish(summary, stop.exit_code)
            if not isinstance(stop, UsageError):  # exit 2: nothing was sent; the line says why
                stop.summary = summary
            raise
        counts = run.journal.counts()  # one pass over every row: costly at millions of rows
        finished = time.time()
        summary = _summary(run, counts, finished - started, None)
        metadata = output_metadata(summary, counts, config, started, finished)
        try:
            output, sidecar = write_output(config, run.table, run.journal, metadata)
        except OSError as exc:  # every answer is in the journal: only the file is missing
            raise operating_error(exc, "write the output", JobStopped,
                                  "every answer is kept: run the same command again to write it"
                                  ) from None
        run.journal.set_meta(state="finished", finished_at=finished, stop_reason=None,
                             exit_code=summary.exit_code)
        page = _write_report(config)
    summary = dataclasses.replace(summary, output=output, usage_output=sidecar, report=page)
    reporter.finish(summary)
    return summary


def _endpoint_keys(config: RunConfig) -> dict[str, Secret | None]:
    """Each endpoint's key by name (empty for a run with one endpoint), resolved and checked for
    that endpoint alone (`settings.keys.resolve_keys`)."""
    return resolve_keys(config)


def _endpoints_event(endpoints: tuple[Endpoint, ...],
                     keys: dict[str, Secret | None]) -> dict[str, Any]:
    """The start event's list of endpoints: where each sends, how fast, and where its key came
    from (never the key)."""
    if not endpoints:
        return {}
    return {"endpoints": [
        {"name": e.name, "model": e.model, "base_url": e.base_url, "rpm": e.rpm, "tpm": e.tpm,
         "concurrency": e.concurrency, "fallback": e.fallback,
         "key_from": key.source if (key := keys.get(e.name)) is not None else None}
        for e in endpoints]}


def _pool_limits(config: RunConfig) -> tuple[float | None, float | None]:
    """The run's limits on its timeline: with several endpoints, the sum of the pool's."""
    if not config.endpoints:
        return config.rpm, config.tpm
    pool = [e for e in config.endpoints if not e.fallback]
    rpms, tpms = [e.rpm for e in pool], [e.tpm for e in pool]
    return (None if None in rpms else sum(r for r in rpms if r is not None),
            None if None in tpms else sum(t for t in tpms if t is not None))


def _run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run on uvloop where it is installed: its loop and transports cost about half the
    CPU per request of asyncio's, which is what bounds a run against a fast server."""
    with _fewer_collections():
        try:
            import uvloop
        except ImportError:  # Windows, or a build without it: the standard loop does the same
            return asyncio.run(coro)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often while a run goes, then as before.

    Each request allocates hundreds of objects, so at the default thresholds (700, 10, 10) the
    collector ran ~900 times and walked the whole heap (pyarrow, aiohttp) eight times in a
    20,000-row run: 0.17 s, a tenth of the run. At (10,000, 50, 100) it costs 0.01 s; reference
    counting frees nearly everything anyway, and the peak memory did not move.
    """
    before = gc.get_threshold()
    gc.set_threshold(10_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def _stop_watching(watcher: asyncio.Task[None], what: str = "progress display") -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await watcher
        except Exception as exc:  # a broken display must not fail a run that has paid
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)


def _write_report(config: RunConfig) -> Path | None:
    """--report: the HTML report beside the output; a report that fails costs a warning only."""
    if not config.report:
        return None
    from batchrun.views.report import build_report

    try:
        return build_report(config.output).save()
    except Exception as exc:  # the run has paid for its answers: they are saved whatever happens
        message = exc.message if isinstance(exc, BatchrunError) else f"{type(exc).__name__}: {exc}"
        log.warning("the report was not written: %s", message)
        return None


def _summary(run: RunContext, counts: dict[str, Any], seconds: float,
             stopped: str | None) -> Summary:
    return build_summary(counts, run.stats, seconds, run.config, None, None,
                         priced=run.price is not None, stopped=stopped)


def run(config: RunConfig, *, key: Secret | None = None,
        reporter: Reporter | None = None) -> Summary:
    """Run a job from plain Python; works inside a running event loop (Jupyter) too."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_loop(run_async(config, key=key, reporter=reporter))
    # A loop is already running in this thread: run ours in a thread of its own.
    results: list[Summary] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(_run_loop(run_async(config, key=key, reporter=reporter)))
        except BaseException as exc:  # handed back to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="batchrun")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def run_dataframe(df: pd.DataFrame, *, output: str | Path | None = None,
                  key: Secret | str | None = None, reporter: Reporter | None = None,
                  **options: Any) -> pd.DataFrame:
    """Send every row of `df`; return `df` with the result columns added (same index and order).

    `options` are the settings of a job by name (``model="gpt-4o-mini"``, ``provider="openai"``,
    ``template="Summarize: {text}"``, ``temperature=0``, ``rpm=500``, ``progress=False``, ...,
    as listed in docs/job-file.md). With `output` the answers are also written
    there and its journal is kept, so calling again resumes instead of paying twice; without it
    everything lives in a temporary directory. The run's summary is in ``result.attrs["batchrun"]``.
    Rows that fail are in the frame with ``status == "error"``; a job-wide stop (bad key, no
    credits, budget) or an interrupt raises JobStopped / Interrupted.
    """
    if "input" in options:
        raise TypeError("run_dataframe() takes its rows from df; use run() for an input file")
    secret = Secret(key) if isinstance(key, str) else key
    try:
        return _run_frame(df, output, secret, reporter, options)
    except BatchrunError as err:  # settings were given by name here, not as flags
        err.message = as_keywords(err.message)
        err.args = (err.message,)
        raise


def _run_frame(df: pd.DataFrame, output: str | Path | None, secret: Secret | None,
               reporter: Reporter | None, options: dict[str, Any]) -> pd.DataFrame:
    """`run_dataframe`, whose errors still name flags."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="batchrun-") as tmp:
        source = Path(tmp) / "input.parquet"
        try:
            table = pa.Table.from_pandas(df, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise UsageError(f"the data frame cannot be stored as Parquet: {exc}") from None
        pq.write_table(table, source)
        target = str(output) if output is not None else str(Path(tmp) / "output.parquet")
        if not target.endswith(".parquet"):  # the frame is read back from it
            raise UsageError(f"run_dataframe output {target} must end in .parquet")
        config = build_config(None, {**options, "input": str(source), "output": target})
        summary = run(config, key=secret, reporter=reporter)
        written = pq.read_table(open_location(target).arrow())  # a path or an s3:// URL
    names = [name for name in (*RESULT_NAMES, ENDPOINT_FIELD.name) if name in written.column_names]
    answers = written.select(names).to_pandas(types_mapper=_nullable_ints)
    answers.index = df.index
    import pandas as pd

    result = pd.concat([df, answers], axis=1)
    result.attrs["batchrun"] = summary.as_dict()
    return result


def _nullable_ints(arrow_type: Any) -> Any:
    """Token counts and attempts stay integers in pandas even where a row failed (null)."""
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_int64(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_int32(arrow_type):
        return pd.Int32Dtype()
    return None
