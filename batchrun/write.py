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
            start = 0
            for batch in table.batches():
                rows = list(journal.rows_between(start, start + batch.num_rows))
                if len(rows) != batch.num_rows:
                    raise RuntimeError(
                        f"journal maps {len(rows)} of rows {start}..{start + batch.num_rows}"
                    )
                arrays = list(batch.columns) + _result_arrays(rows, parsed_type)
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                start += batch.num_rows
            if start == 0:
                writer.write_table(schema.empty_table())
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
    copy = [r[_COPY] for r in rows]

    def column(i: int, usage: bool = False) -> list[Any]:
        if usage:
            return [0 if c and r[i] is not None else r[i] for r, c in zip(rows, copy, strict=True)]
        return [r[i] for r in rows]

    status = [r[_STATUS] or "pending" for r in rows]
    arrays = [
        pa.array(column(_RESPONSE), pa.string()),
        pa.array([r[_FINISH] or "error" for r in rows], pa.string()),
        pa.array(column(_PT, True), pa.int64()),
        pa.array(column(_CT, True), pa.int64()),
        pa.array(column(_TT, True), pa.int64()),
        pa.array(status, pa.string()),
        pa.array(column(_ERROR), pa.string()),
        pa.array([0 if c else (r[_ATTEMPTS] or 0) for r, c in zip(rows, copy, strict=True)],
                 pa.int32()),
        pa.array(column(_LATENCY), pa.float64()),
        pa.array(column(_MODEL), pa.string()),
        pa.array(column(_RID), pa.string()),
        pa.array(column(_COST, True), pa.float64()),
    ]
    if parsed_type is not None:
        values = [conform(orjson.loads(r[_PARSED]), parsed_type) if r[_PARSED] else None
                  for r in rows]
        arrays.append(pa.array(values, parsed_type))
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
