"""What a report shows, gathered from the output, its `batchrun` metadata and the journal.

A finished output is read column by column with pyarrow; a run that is going, stopped or was
interrupted has no output yet (or an old one), so its results are read from the journal instead.
Either way the same columns come out, and everything after that is the same code.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun.errors import EXIT_OK, EXIT_ROWS_FAILED, UsageError
from batchrun.journal.database import Journal, OutputLock, Sample, journal_path
from batchrun.running.output import (
    DETAIL_FIELDS,
    DETAILS_AT,
    ENDPOINT_AT,
    ENDPOINT_FIELD,
    RESULT_FIELDS,
    RESULT_NAMES,
)
from batchrun.running.timeline import coarsen
from batchrun.views.report.endpoints import EndpointUsage, endpoint_usage
from batchrun.views.report.rows import RowSource, SampleRow, error_class, sample_rows

TIMELINE_POINTS = 600  # the most points a timeline chart draws: a long run is shown coarser
EXAMPLES = 3  # example messages shown per error class
# Result columns the report reads for every row (the answers only for the sampled rows).
COLUMNS = ("status", "error", "latency_ms", "model", "attempts", "prompt_tokens",
           "completion_tokens", "total_tokens", "cost_usd")
# ... and these where the output has them (null where it has not: an older output, a run
# without endpoints).
OPTIONAL = (ENDPOINT_FIELD, *DETAIL_FIELDS)
SCHEMA = pa.schema([next(f for f in RESULT_FIELDS if f.name == name) for name in COLUMNS]
                   + list(OPTIONAL))
# Where each column is in a row of `Journal.output_rows`.
_JOURNAL_AT = {**{f.name: i for i, f in enumerate(RESULT_FIELDS)}, ENDPOINT_FIELD.name: ENDPOINT_AT,
               **{f.name: DETAILS_AT + i for i, f in enumerate(DETAIL_FIELDS)}}
CHUNK_ROWS = 50_000  # rows read from a journal at a time


@dataclass(frozen=True)
class Header:
    """The figures at the top of the report."""

    output: str
    state: str
    rows_total: int
    rows_ok: int
    rows_error: int
    rows_pending: int
    seconds: float | None
    started_at: float | None
    finished_at: float | None
    cost_usd: float | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    model: str | None
    endpoint: str | None
    exit_code: int | None
    stop_reason: str | None = None
    rows_cached: int | None = None  # answered by the shared cache (a run with --cache)
    # The provider's details of its usage (None: it reported none).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    provider_cost: float | None = None


@dataclass(frozen=True)
class ErrorClass:
    """Failures of one class: attempts retried this run, rows failed for good, a few messages."""

    name: str
    meaning: str
    attempts: int | None
    rows: int
    examples: list[tuple[str, int]]


@dataclass(frozen=True)
class ModelUsage:
    """Rows, requests, tokens and cost of one model."""

    model: str
    rows_ok: int
    rows_error: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


@dataclass(frozen=True)
class Facts:
    """Everything the page and its charts are made from."""

    header: Header
    timeline: list[Sample]
    grain: float  # seconds per timeline point
    earlier_runs: int  # runs on this output before the one the timeline shows
    latencies_ms: pa.Array
    errors: list[ErrorClass]
    models: list[ModelUsage]
    samples: list[SampleRow] = field(default_factory=list)
    endpoints: list[EndpointUsage] = field(default_factory=list)  # a run with endpoints
    # Each endpoint's own timeline (its samples of the latest run, coarsened as `timeline`).
    endpoint_timelines: dict[str, list[Sample]] = field(default_factory=dict)


def gather(output: Path, now: float | None = None) -> Facts:
    """Read what there is about the run of `output` (finished, stopped or still going)."""
    jpath = journal_path(output)
    if not jpath.exists() and not output.exists():
        raise UsageError(f"no run found for {output} (no output and no journal at {jpath})")
    meta: dict[str, Any] = {}
    samples: list[Sample] = []
    journal: Journal | None = None
    source: RowSource
    pid = OutputLock(output).held_elsewhere() if jpath.exists() else None
    if pid == os.getpid():  # `run --report`: this process is the run, and it has ended
        pid = None
    try:
        if jpath.exists():
            journal = Journal(jpath, readonly=True)
            meta, samples = journal.meta(), journal.timeline()
        finished = meta.get("state", "finished") == "finished" and not pid
        if output.exists() and output.suffix == ".parquet" and finished:
            results, source = _output_results(output), _OutputRows(output)
            metadata = _metadata(output)
        elif journal is not None:
            results, source, metadata = _journal_results(journal), _JournalRows(journal, meta), {}
        else:
            raise UsageError(f"{output} is not a Parquet output and has no journal beside it")
        rows = sample_rows(results, source)
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"journal {jpath} is not readable ({exc})") from None
    finally:
        if journal is not None:
            journal.close()
    runs = sorted({s.run for s in samples})
    latest = [s for s in samples if s.run == runs[-1]] if runs else []  # the latest run's
    shown = [s for s in latest if s.endpoint is None]  # the run's own; a pool's per endpoint:
    by_endpoint: dict[str, list[Sample]] = {}
    for s in latest:
        if s.endpoint is not None:
            by_endpoint.setdefault(s.endpoint, []).append(s)
    points = coarsen(shown, TIMELINE_POINTS)
    grain = (sum(s.span for s in shown) / len(points)) if points else 1.0
    return Facts(
        header=_header(output, meta, metadata, results, pid, time.time() if now is None else now),
        timeline=points, grain=grain, earlier_runs=max(0, len(runs) - 1),
        latencies_ms=_latencies(results), errors=_errors(results, meta, shown),
        models=_models(results), samples=rows, endpoints=endpoint_usage(results, by_endpoint),
        endpoint_timelines={name: coarsen(own, TIMELINE_POINTS)
                            for name, own in sorted(by_endpoint.items())},
    )


def _metadata(output: Path) -> dict[str, Any]:
    raw = (pq.read_schema(output).metadata or {}).get(b"batchrun")
    return orjson.loads(raw) if raw else {}


def _output_results(output: Path) -> pa.Table:
    try:
        names = set(pq.read_schema(output).names)
        present = [f.name for f in OPTIONAL if f.name in names]
        table = pq.read_table(output, columns=[*COLUMNS, *present])
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"cannot read {output} as a batchrun output ({exc})") from None
    for f in OPTIONAL:
        if f.name not in names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(SCHEMA.names)


def _journal_results(journal: Journal) -> pa.Table:
    """The same columns as an output's, row by row in input order, from a journal."""
    wanted = [_JOURNAL_AT[name] for name in SCHEMA.names]
    batches, start = [SCHEMA.empty_table()], 0
    while True:
        rows = journal.output_rows(start, start + CHUNK_ROWS)
        if not rows:
            break
        columns = list(zip(*rows, strict=True))
        batches.append(pa.table([list(columns[i]) for i in wanted], schema=SCHEMA))
        start += CHUNK_ROWS
    return pa.concat_tables(batches)


class _OutputRows:
    """Input columns and answers of chosen rows of a Parquet output."""

    def __init__(self, output: Path) -> None:
        self.file = pq.ParquetFile(output)
        self.inputs = [n for n in self.file.schema_arrow.names if n not in RESULT_NAMES]

    def fetch(self, indexes: list[int]) -> dict[int, tuple[dict[str, Any], str | None]]:
        """Row index -> (input columns, answer), reading only the row groups that hold them."""
        found: dict[int, tuple[dict[str, Any], str | None]] = {}
        start = 0
        wanted = sorted(indexes)
        for group in range(self.file.num_row_groups):
            n = self.file.metadata.row_group(group).num_rows
            inside = [i for i in wanted if start <= i < start + n]
            if inside:
                table = self.file.read_row_group(group, columns=[*self.inputs, "response"])
                picked = table.take([i - start for i in inside]).to_pylist()
                for i, row in zip(inside, picked, strict=True):
                    answer = row.pop("response")
                    found[i] = (row, answer)
            start += n
        return found


class _JournalRows:
    """Input columns (from the input file, while it is there) and answers (journal) of rows."""

    def __init__(self, journal: Journal, meta: dict[str, Any]) -> None:
        self.journal = journal
        self.input = meta.get("input")

    def fetch(self, indexes: list[int]) -> dict[int, tuple[dict[str, Any], str | None]]:
        """Row index -> (input columns, answer)."""
        inputs = self._inputs(indexes)
        found = {}
        for i in indexes:
            rows = self.journal.output_rows(i, i + 1)
            found[i] = (inputs.get(i, {}), rows[0][0] if rows else None)
        return found

    def _inputs(self, indexes: list[int]) -> dict[int, dict[str, Any]]:
        from batchrun.data.read import open_input

        if not self.input or not indexes:
            return {}
        wanted, found, start = set(indexes), {}, 0
        try:
            for batch in open_input(Path(self.input)).batches():
                inside = [i for i in wanted if start <= i < start + batch.num_rows]
                for i, row in zip(inside, batch.take([i - start for i in inside]).to_pylist(),
                                  strict=True):
                    found[i] = row
                start += batch.num_rows
                if start > max(wanted):
                    break
        except (UsageError, OSError):  # moved or changed since the run: answers without inputs
            return found
        return found


def _header(output: Path, meta: dict[str, Any], metadata: dict[str, Any], results: pa.Table,
            pid: int | None, now: float) -> Header:
    statuses = Counter(results.column("status").to_pylist()) if not metadata else Counter()
    rows = metadata.get("rows") or {
        "total": meta.get("total_rows") or results.num_rows,
        "ok": statuses["ok"], "error": statuses["error"],
    }
    usage = metadata.get("usage") or {
        name: _sum(results, name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    started = metadata.get("started_at", meta.get("started_at"))
    ended = metadata.get("finished_at", meta.get("finished_at"))
    cost = metadata["cost_usd"] if "cost_usd" in metadata else (
        _sum(results, "cost_usd") if pc.count(results.column("cost_usd")).as_py() else None)
    details = {name: usage[name] if name in usage else _known_sum(results, name)
               for name in ("cached_tokens", "reasoning_tokens")}
    provider_cost = (metadata["provider_cost"] if "provider_cost" in metadata
                     else _known_sum(results, "provider_cost"))
    state = _state(meta, pid)
    seconds = None
    if started:
        seconds = (ended if ended and state != "running" else now) - started
    return Header(
        output=os.path.normpath(output), state=state, rows_total=int(rows["total"]),
        rows_ok=int(rows["ok"]),
        rows_error=int(rows["error"]),
        rows_pending=max(0, int(rows["total"]) - int(rows["ok"]) - int(rows["error"])),
        seconds=seconds, started_at=started, finished_at=ended if state != "running" else None,
        cost_usd=cost, prompt_tokens=int(usage["prompt_tokens"]),
        completion_tokens=int(usage["completion_tokens"]), total_tokens=int(usage["total_tokens"]),
        model=metadata.get("model", meta.get("model")),
        endpoint=metadata.get("base_url", meta.get("base_url")),
        exit_code=_exit_code(meta, state, int(rows["error"])),
        stop_reason=meta.get("stop_reason") if state == "stopped" else None,
        rows_cached=int(rows["cached"]) if "cached" in rows else None,
        cached_tokens=details["cached_tokens"], reasoning_tokens=details["reasoning_tokens"],
        provider_cost=provider_cost,
    )


def _exit_code(meta: dict[str, Any], state: str, errors: int) -> int | None:
    if state == "running":
        return None
    if "exit_code" in meta:
        return int(meta["exit_code"])
    if state == "finished":  # a run before batchrun stored it: the contract says which
        return EXIT_ROWS_FAILED if errors else EXIT_OK
    return None


def _state(meta: dict[str, Any], pid: int | None) -> str:
    if pid:
        return "running"
    state = str(meta.get("state", "finished"))
    return "interrupted" if state == "running" else state  # died without saying so (kill -9)


def _sum(results: pa.Table, name: str) -> Any:
    return pc.sum(results.column(name)).as_py() or 0


def _known_sum(results: pa.Table, name: str) -> Any:
    """The sum of a column's reported values; None when no row reported one."""
    return pc.sum(results.column(name)).as_py() if pc.count(results.column(name)).as_py() else None


def _latencies(results: pa.Table) -> pa.Array:
    """Latency of every answer this output paid for (a dedup copy repeats another's)."""
    keep = pc.and_(pc.equal(results.column("status"), "ok"),
                   pc.greater(results.column("attempts"), 0))
    return pc.drop_null(results.filter(keep).column("latency_ms")).combine_chunks()


CLASSES = (
    ("rate", "429 rate limits: retried, or given up on after the last attempt"),
    ("server", "5xx answers, dropped connections, timeouts, unreadable bodies"),
    ("row-fatal", "this row can never succeed as sent: 400, content filter, invalid row"),
    ("job stop", "a job-wide failure or budget stopped the run; its unsent rows stay pending"),
)


def _errors(results: pa.Table, meta: dict[str, Any], samples: list[Sample]) -> list[ErrorClass]:
    failed = results.filter(pc.equal(results.column("status"), "error")).column("error")
    by_class: dict[str, Counter[str]] = {name: Counter() for name, _ in CLASSES}
    for message in failed.to_pylist():
        text = message or "(no message)"
        by_class[error_class(text)][_without_attempts(text)] += 1
    attempts = {"rate": sum(s.rate_limited for s in samples),
                "server": sum(s.transient for s in samples)}
    stop = meta.get("stop_reason") if meta.get("state") == "stopped" else None
    found = []
    for name, meaning in CLASSES:
        counts = by_class[name]
        if name == "job stop":
            found.append(ErrorClass(name, meaning, None, 0, [(stop, 1)] if stop else []))
            continue
        found.append(ErrorClass(name, meaning, attempts.get(name) if samples else None,
                                sum(counts.values()), counts.most_common(EXAMPLES)))
    return found


def _without_attempts(message: str) -> str:
    """'... (gave up after 4 attempts)' and '... after 6 attempts' are one kind of message."""
    head, marker, _ = message.partition(" (gave up after")
    return head + (" (gave up after the last attempt)" if marker else "")


def _models(results: pa.Table) -> list[ModelUsage]:
    table = results.filter(pc.is_in(results.column("status"), pa.array(["ok", "error"])))
    status = table.column("status")
    table = table.append_column("is_ok", pc.cast(pc.equal(status, "ok"), pa.int64()))
    table = table.append_column("is_error", pc.cast(pc.equal(status, "error"), pa.int64()))
    if table.num_rows == 0:
        return []
    grouped = table.group_by("model").aggregate([
        ("is_ok", "sum"), ("is_error", "sum"), ("attempts", "sum"), ("prompt_tokens", "sum"),
        ("completion_tokens", "sum"), ("cost_usd", "sum"), ("cost_usd", "count"),
    ]).to_pylist()
    return sorted((ModelUsage(
        model=row["model"] or "(none)", rows_ok=row["is_ok_sum"] or 0,
        rows_error=row["is_error_sum"] or 0, requests=row["attempts_sum"] or 0,
        prompt_tokens=row["prompt_tokens_sum"] or 0,
        completion_tokens=row["completion_tokens_sum"] or 0,
        cost_usd=row["cost_usd_sum"] if row["cost_usd_count"] else None,
    ) for row in grouped), key=lambda m: (-(m.cost_usd or 0), -m.requests, m.model))

