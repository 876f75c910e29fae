"""Rows in a report: the class of a row's error, and the sample of rows shown, failed ones first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

FAILED_SHOWN = 8  # failed rows shown, the first in input order
OK_SHOWN = 10  # answered rows shown, spread over the output
PENDING_SHOWN = 3  # rows not answered yet (a stopped or running run)
TEXT_CHARS = 600  # longest input value or answer shown in full; longer ones are cut


@dataclass(frozen=True)
class SampleRow:
    """One row as the report shows it."""

    index: int
    status: str
    inputs: list[tuple[str, str]]
    answer: str | None
    error: str | None


class RowSource(Protocol):
    """Where the inputs and answers of chosen rows are read from (the output or the journal)."""

    def fetch(self, indexes: list[int]) -> dict[int, tuple[dict[str, Any], str | None]]: ...


def error_class(message: str) -> str:
    """rate, server or row-fatal, from a row's error line.

    A row whose failures outlasted its retries carries "(gave up after N attempts ...)"; its
    class is that of its last failure, a 429 or something transient. Any other error is the
    row's own (400, content filter, an invalid row), which no retry would fix.
    """
    if " (gave up after " not in message:
        return "row-fatal"
    return "rate" if message.startswith("HTTP 429") else "server"


def sample_rows(results: pa.Table, source: RowSource) -> list[SampleRow]:
    """Failed rows first, then answered rows spread over the output, then a few pending ones."""
    status = results.column("status")
    failed = _indexes(pc.equal(status, "error"))[:FAILED_SHOWN]
    answered = _spread(_indexes(pc.equal(status, "ok")), OK_SHOWN)
    pending = _indexes(pc.equal(status, "pending"))[:PENDING_SHOWN]
    chosen = failed + answered + pending
    fetched = source.fetch(chosen)
    errors = results.column("error")
    shown = []
    for i in chosen:
        inputs, answer = fetched.get(i, ({}, None))
        shown.append(SampleRow(
            index=i, status=str(status[i].as_py()),
            inputs=[(str(name), _cut(_text(value))) for name, value in inputs.items()],
            answer=None if answer is None else _cut(answer), error=errors[i].as_py(),
        ))
    return shown


def _indexes(mask: Any) -> list[int]:
    found: list[int] = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
    return found


def _spread(indexes: list[int], most: int) -> list[int]:
    if len(indexes) <= most:
        return indexes
    step = (len(indexes) - 1) / (most - 1)
    return [indexes[round(k * step)] for k in range(most)]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f"… ({len(text):,} characters)"
