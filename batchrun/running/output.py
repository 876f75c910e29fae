"""Write: the output (Parquet, or batch-format JSONL) in input order, rebuilt from the input and
the journal, atomically, and its usage sidecar."""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.data import batch_jsonl as jsonl
from batchrun.data.locations import is_jsonl_output, publish, usage_path, usage_url
from batchrun.protocol.structured import arrow_type, conform, infer_type

if TYPE_CHECKING:
    from batchrun.data.read import InputTable
    from batchrun.journal.database import Journal
    from batchrun.journal.readback import UsageRow
    from batchrun.settings.config import RunConfig

RESULT_FIELDS = (
    pa.field("response", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("latency_ms", pa.float64()),
    pa.field("model", pa.string()),
    pa.field("response_id", pa.string()),
    pa.field("cost_usd", pa.float64()),
)
# The provider's details of its usage: in every output, null where it did not report them.
DETAIL_FIELDS = (
    pa.field("cached_tokens", pa.int64()),
    pa.field("reasoning_tokens", pa.int64()),
    pa.field("provider_cost", pa.float64()),
)
ENDPOINT_FIELD = pa.field("endpoint", pa.string())  # with endpoints: the one that settled the row
CACHED_FIELD = pa.field("cached", pa.bool_())  # with --cache: the shared cache answered the row
ROW_GROUP_ROWS = 16_384  # rows per Parquet row group: big enough for readers, small enough for memory
# The result columns an output may have whatever the run (`endpoint` and `cached` depend on it).
RESULT_NAMES = tuple(f.name for f in RESULT_FIELDS) + ("parsed",) + tuple(f.name for f in DETAIL_FIELDS)
# Where each value is in a row `readback.output_rows` gives: RESULT_FIELDS, then these.
PARSED_AT = len(RESULT_FIELDS)
CACHED_AT = PARSED_AT + 1
ENDPOINT_AT = PARSED_AT + 2
DETAILS_AT = PARSED_AT + 3
# A row with no result yet, as `readback.output_rows` lays one out (status "pending", 0 attempts).
PENDING_ROW = (None, None, None, None, None, "pending", None, 0, None, None, None, None, None,
               False, None, None, None, None)
USAGE_FIELDS = (
    pa.field("model", pa.string()), pa.field("rows_ok", pa.int64()),
    pa.field("rows_error", pa.int64()), pa.field("requests", pa.int64()),
    pa.field("prompt_tokens", pa.int64()), pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()), pa.field("cost_usd", pa.float64()), *DETAIL_FIELDS,
)
USAGE_SCHEMA = pa.schema(USAGE_FIELDS)


def write_output(config: RunConfig, table: InputTable, journal: Journal,
                 metadata: Mapping[str, Any]) -> tuple[Path | str, Path | str]:
    """Write OUTPUT and its usage sidecar atomically; returns where both are (paths or URLs).

    The sidecar carries the `batchrun` totals in its metadata too: a JSONL output has no place
    of its own for them. An object-store output is written in its local home, then uploaded
    (`store.publish`) and the local copies removed.
    """
    output = config.output
    _remove_stale_temporaries(output)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        _write_rows(tmp, output, config.id_column, _parsed_type(config, journal),
                    config.cache is not None, table, journal, metadata,
                    endpoints=bool(config.endpoints))
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    sidecar = usage_path(output)
    endpoints = bool(config.endpoints)
    _write_usage(sidecar, journal.by_model(endpoints), metadata, cached=config.cache is not None,
                 endpoints=endpoints)
    if config.output_url is None:
        return output, sidecar
    remote_sidecar = usage_url(config.output_url)
    publish(output, config.output_url)
    publish(sidecar, remote_sidecar)
    output.unlink()
    sidecar.unlink()
    return config.output_url, remote_sidecar


def write_partial(to: Path, id_column: str | None, parsed_type: pa.DataType | None, cached: bool,
                  table: InputTable, journal: Journal, metadata: Mapping[str, Any],
                  endpoints: bool = False) -> None:
    """What a stopped or running output has so far, atomically at `to` (`batchrun export`): the
    output's columns, with the rows not answered yet as `status = "pending"`."""
    tmp = to.with_name(f".{to.name}.{os.getpid()}.tmp")
    try:
        _write_rows(tmp, to, id_column, parsed_type, cached, table, journal, metadata,
                    partial=True, endpoints=endpoints)
        os.replace(tmp, to)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_rows(tmp: Path, output: Path, id_column: str | None, parsed_type: pa.DataType | None,
                cached: bool, table: InputTable, journal: Journal, metadata: Mapping[str, Any],
                partial: bool = False, endpoints: bool = False) -> None:
    """The output's rows into `tmp`, in the format `output`'s name asks for."""
    results = _with_results(table, journal, partial)
    if is_jsonl_output(output):
        _write_jsonl(tmp, id_column, table, results, metadata)
    else:
        _write_parquet(tmp, parsed_type, cached, endpoints, table, results, metadata)


def result_fields(parsed_type: pa.DataType | None, cached: bool,
                  endpoints: bool) -> list[pa.Field]:
    """The output's result columns, in DESIGN.md's order: the answer and its usage, `parsed`,
    `endpoint` and `cached` when the run has them, then the usage details."""
    fields = list(RESULT_FIELDS)
    if parsed_type is not None:
        fields.append(pa.field("parsed", parsed_type))
    if endpoints:
        fields.append(ENDPOINT_FIELD)
    if cached:
        fields.append(CACHED_FIELD)
    return fields + list(DETAIL_FIELDS)


def _write_parquet(tmp: Path, parsed_type: pa.DataType | None, cached: bool, endpoints: bool,
                   table: InputTable,
                   results: Iterator[tuple[int, pa.RecordBatch, list[tuple[Any, ...]]]],
                   metadata: Mapping[str, Any]) -> None:
    """Every input column, then the result columns; the totals in the `batchrun` metadata key."""
    fields = result_fields(parsed_type, cached, endpoints)
    input_schema = table.schema.remove_metadata()
    schema = pa.schema(list(input_schema) + fields,
                       metadata={b"batchrun": orjson.dumps(metadata)})
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        group: list[pa.RecordBatch] = []
        grouped, written = 0, 0
        for _, batch, rows in results:
            arrays = list(batch.columns) + _result_arrays(rows, parsed_type, cached, endpoints)
            group.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            grouped += batch.num_rows
            written += batch.num_rows
            if grouped >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(group))
                group, grouped = [], 0
        if group or written == 0:  # an empty input still gets its (empty) table
            writer.write_table(pa.Table.from_batches(group, schema=schema))


def _write_jsonl(tmp: Path, id_column: str | None, table: InputTable,
                 results: Iterator[tuple[int, pa.RecordBatch, list[tuple[Any, ...]]]],
                 metadata: Mapping[str, Any]) -> None:
    """One batch-output line per input row, in input order (`jsonl.output_line`)."""
    created = int(metadata.get("finished_at") or time.time())
    with tmp.open("wb") as f:
        for start, batch, rows in results:
            ids = _custom_ids(id_column, table, batch, start)
            f.write(b"".join(jsonl.output_line(start + i, custom_id, row, created) + b"\n"
                             for i, (custom_id, row) in enumerate(zip(ids, rows, strict=True))))


def _with_results(table: InputTable, journal: Journal, partial: bool = False
                  ) -> Iterator[tuple[int, pa.RecordBatch, list[tuple[Any, ...]]]]:
    """(first row index, input batch, the journal's result rows for it), in input order.

    `partial`: a stopped or running run's rows not mapped yet, or with no result yet, are pending.
    """
    start = 0
    for batch in table.batches():
        rows = journal.output_rows(start, start + batch.num_rows)
        if partial:
            rows = [PENDING_ROW if row[5] == "pending" else row for row in rows]
            rows += [PENDING_ROW] * (batch.num_rows - len(rows))  # mapped in input order
        if len(rows) != batch.num_rows:
            raise RuntimeError(f"journal maps {len(rows)} of rows {start}..{start + batch.num_rows}")
        yield start, batch, rows
        start += batch.num_rows


def _custom_ids(id_column: str | None, table: InputTable, batch: pa.RecordBatch,
                start: int) -> list[str]:
    """Each row's id in the batch output: custom_id, else --id-column, else `row-N`."""
    column = "custom_id" if table.format == "jsonl" else id_column
    if column is None:
        return [f"row-{start + i}" for i in range(batch.num_rows)]
    values = batch.column(column).to_pylist()
    return [f"row-{start + i}" if v is None else v if isinstance(v, str) else str(v)
            for i, v in enumerate(values)]


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files of a writer that was killed; the caller holds the output's lock."""
    for name in (output.name, usage_path(output).name):
        for stale in output.parent.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _result_arrays(rows: list[tuple[Any, ...]], parsed_type: pa.DataType | None,
                   cached: bool = False, endpoints: bool = False) -> list[pa.Array]:
    """Arrow columns of the journal's output rows, as `result_fields` orders them."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(PENDING_ROW)
    arrays = [_column(values, f.type) for values, f in zip(cols, RESULT_FIELDS, strict=False)]
    if parsed_type is not None:
        texts = cols[PARSED_AT]
        parsed = [conform(orjson.loads(p), parsed_type) if p else None for p in texts]
        arrays.append(pa.array(parsed, parsed_type))
    if endpoints:
        arrays.append(_column(cols[ENDPOINT_AT], pa.string()))
    if cached:
        flags = cols[CACHED_AT]
        arrays.append(_column([bool(f) for f in flags], pa.bool_()))
    arrays += [_column(cols[DETAILS_AT + i], f.type) for i, f in enumerate(DETAIL_FIELDS)]
    return arrays


_NUMPY_TYPES = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64}


def _column(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """A nullable string, number or boolean column built from its buffers.

    Not pa.array(): its first call imports pandas (0.14 s) to ask whether `values` is a pandas
    object, a seventh of a 20,000-row run against a fast server.
    """
    n = len(values)
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=n)
    nulls = n - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    if kind == pa.string():
        encoded = [v.encode() if v is not None else b"" for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        if offsets[-1] >= 2**31:  # past what 32-bit offsets address: let Arrow split it
            return pa.array(values, kind)
        return pa.Array.from_buffers(kind, n, [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                               pa.py_buffer(b"".join(encoded))], null_count=nulls)
    if kind == pa.bool_():  # one bit a value, as the validity bitmap
        bits = np.fromiter((bool(v) for v in values), dtype=np.bool_, count=n)
        data = pa.py_buffer(np.packbits(bits, bitorder="little"))
        return pa.Array.from_buffers(kind, n, [bitmap, data], null_count=nulls)
    data = np.fromiter((0 if v is None else v for v in values), dtype=_NUMPY_TYPES[kind], count=n)
    return pa.Array.from_buffers(kind, n, [bitmap, pa.py_buffer(data)], null_count=nulls)


def _parsed_type(config: RunConfig, journal: Journal) -> pa.DataType | None:
    return parsed_type(config.response_format, config.schema, journal)


def parsed_type(response_format: str, schema: Mapping[str, Any] | None,
                journal: Journal) -> pa.DataType | None:
    """The `parsed` column's type: none for text answers, the schema's, else the answers'."""
    if response_format == "text":
        return None
    if schema is not None:
        return arrow_type(schema)
    return infer_type(journal.parsed_texts())


def _write_usage(path: Path, by_model: Sequence[UsageRow], metadata: Mapping[str, Any],
                 cached: bool = False, endpoints: bool = False) -> None:
    """The sidecar: one row per model (`journal.by_model`), per endpoint and model with
    `endpoints` (an `endpoint` column first); with --cache, `rows_cached` too."""
    fields = ([ENDPOINT_FIELD] if endpoints else []) + list(USAGE_FIELDS)
    if cached:
        fields.append(pa.field("rows_cached", pa.int64()))
    schema = pa.schema(fields, metadata={b"batchrun": orjson.dumps(metadata)})
    table = pa.Table.from_arrays(
        [_column([getattr(row, f.name) for row in by_model], f.type) for f in fields],
        schema=schema,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
