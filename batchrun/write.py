"""Write: the output Parquet, in input order, rebuilt from the input and the journal, atomically."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .structured import arrow_type, conform, infer_type

if TYPE_CHECKING:
    from .config import RunConfig
    from .journal import Journal
    from .read import InputTable

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
ROW_GROUP_ROWS = 16_384  # rows per Parquet row group: big enough for readers, small enough for memory
RESULT_NAMES = tuple(f.name for f in RESULT_FIELDS) + ("parsed",)
USAGE_SCHEMA = pa.schema([
    pa.field("model", pa.string()), pa.field("rows_ok", pa.int64()),
    pa.field("rows_error", pa.int64()), pa.field("requests", pa.int64()),
    pa.field("prompt_tokens", pa.int64()), pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()), pa.field("cost_usd", pa.float64()),
])
# Positions in a journal row: (idx, copy, key, status, response, finish_reason, prompt_tokens,
# completion_tokens, total_tokens, error, error_kind, attempts, latency_ms, model, response_id,
# cost_usd, parsed, finished_at)
_COPY, _STATUS, _RESPONSE, _FINISH, _PT, _CT, _TT, _ERROR = 1, 3, 4, 5, 6, 7, 8, 9
_ATTEMPTS, _LATENCY, _MODEL, _RID, _COST, _PARSED = 11, 12, 13, 14, 15, 16


def usage_path(output: Path) -> Path:
    """The sidecar of per-model usage totals beside the output."""
    return output.with_name(output.name.removesuffix(".parquet") + ".usage.parquet")


def write_output(config: RunConfig, table: InputTable, journal: Journal,
                 metadata: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write OUTPUT and its usage sidecar atomically; returns both paths."""
    parsed_type = _parsed_type(config, journal)
    fields = list(RESULT_FIELDS)
    if parsed_type is not None:
        fields.append(pa.field("parsed", parsed_type))
    input_schema = table.schema.remove_metadata()
    schema = pa.schema(list(input_schema) + fields,
                       metadata={b"batchrun": orjson.dumps(metadata)})
    output = config.output
    _remove_stale_temporaries(output)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            start, group, grouped = 0, [], 0
            for batch in table.batches():
                rows = list(journal.rows_between(start, start + batch.num_rows))
                if len(rows) != batch.num_rows:
                    raise RuntimeError(
                        f"journal maps {len(rows)} of rows {start}..{start + batch.num_rows}"
                    )
                arrays = list(batch.columns) + _result_arrays(rows, parsed_type)
                group.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
                grouped += batch.num_rows
                start += batch.num_rows
                if grouped >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(group))
                    group, grouped = [], 0
            if group or start == 0:
                writer.write_table(pa.Table.from_batches(group, schema=schema))
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    sidecar = usage_path(output)
    _write_usage(sidecar, journal.by_model())
    return output, sidecar


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files of a writer that was killed; the caller holds the output's lock."""
    for name in (output.name, usage_path(output).name):
        for stale in output.parent.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _result_arrays(rows: list[tuple[Any, ...]], parsed_type: pa.DataType | None) -> list[pa.Array]:
    cols = list(zip(*rows, strict=True)) if rows else [()] * (_PARSED + 1)
    copy = cols[_COPY]
    usage = {i: cols[i] for i in (_PT, _CT, _TT, _COST)}
    attempts = [a or 0 for a in cols[_ATTEMPTS]]
    if any(copy):
        # A dedup copy shows the shared answer but none of its usage: totals stay what was billed.
        for i, values in usage.items():
            usage[i] = tuple(0 if c and v is not None else v
                             for v, c in zip(values, copy, strict=True))
        attempts = [0 if c else a for a, c in zip(attempts, copy, strict=True)]
    arrays = [
        pa.array(cols[_RESPONSE], pa.string()),
        pa.array([f or "error" for f in cols[_FINISH]], pa.string()),
        pa.array(usage[_PT], pa.int64()),
        pa.array(usage[_CT], pa.int64()),
        pa.array(usage[_TT], pa.int64()),
        pa.array([s or "pending" for s in cols[_STATUS]], pa.string()),
        pa.array(cols[_ERROR], pa.string()),
        pa.array(attempts, pa.int32()),
        pa.array(cols[_LATENCY], pa.float64()),
        pa.array(cols[_MODEL], pa.string()),
        pa.array(cols[_RID], pa.string()),
        pa.array(usage[_COST], pa.float64()),
    ]
    if parsed_type is not None:
        parsed = [conform(orjson.loads(p), parsed_type) if p else None for p in cols[_PARSED]]
        arrays.append(pa.array(parsed, parsed_type))
    return arrays


def _parsed_type(config: RunConfig, journal: Journal) -> pa.DataType | None:
    if config.response_format == "text":
        return None
    if config.schema is not None:
        return arrow_type(config.schema)
    return infer_type(_parsed_texts(journal))


def _parsed_texts(journal: Journal) -> Any:
    start = 0
    while rows := list(journal.rows_between(start, start + 50_000)):
        yield from (r[_PARSED] for r in rows)
        start += 50_000


def _write_usage(path: Path, by_model: list[tuple[Any, ...]]) -> None:
    columns: list[Any] = list(zip(*by_model, strict=True)) if by_model else [() for _ in USAGE_SCHEMA]
    table = pa.Table.from_arrays(
        [pa.array(list(values), f.type) for values, f in zip(columns, USAGE_SCHEMA, strict=True)],
        schema=USAGE_SCHEMA,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
