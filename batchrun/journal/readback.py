"""Reading back: a run's results by input row, for the output, its usage sidecar and `status`.

Every query joins the run's `rows` (input order; dedup copies marked) to wherever its results are,
`results_from`: `log`, `results` or the view laying one over the other (`Journal._results`). A row
with no result yet is `pending`; a dedup copy shows the shared answer but none of its usage (0
tokens, cost and attempts), so the output's totals are what was billed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any


def output_rows(db: sqlite3.Connection, results_from: str, start: int,
                stop: int) -> list[tuple[Any, ...]]:
    """The result columns of the output for rows start <= idx < stop, in order, then whether the
    shared cache answered the row (an ok result of 0 attempts: `protocol.outcome`)."""
    return db.execute(
        f"""SELECT res.response, COALESCE(res.finish_reason, 'error'),
             CASE WHEN r.copy THEN 0 * res.prompt_tokens ELSE res.prompt_tokens END,
             CASE WHEN r.copy THEN 0 * res.completion_tokens ELSE res.completion_tokens END,
             CASE WHEN r.copy THEN 0 * res.total_tokens ELSE res.total_tokens END,
             COALESCE(res.status, 'pending'), res.error,
             CASE WHEN r.copy THEN 0 ELSE COALESCE(res.attempts, 0) END,
             res.latency_ms, res.model, res.response_id,
             CASE WHEN r.copy THEN 0 * res.cost_usd ELSE res.cost_usd END, res.parsed,
             res.status = 'ok' AND res.attempts = 0
           FROM rows r LEFT JOIN {results_from} res ON res.key = r.key
           WHERE r.idx >= ? AND r.idx < ? ORDER BY r.idx""",
        (start, stop),
    ).fetchall()


def parsed_texts(db: sqlite3.Connection, results_from: str) -> Iterator[str | None]:
    """The parsed structured answer (JSON text) of every mapped row, in input order."""
    yield from (parsed for (parsed,) in db.execute(
        f"SELECT res.parsed FROM rows r LEFT JOIN {results_from} res ON res.key = r.key "
        "ORDER BY r.idx"
    ))


def tallies(db: sqlite3.Connection, results_from: str) -> list[tuple[Any, ...]]:
    """One pass over the mapped rows, grouped by (no result yet, model): what `counts` and
    `by_model` sum up."""
    return db.execute(
        f"""SELECT res.status IS NULL, COALESCE(res.model, ''), COUNT(*),
             SUM(res.status = 'ok'), SUM(res.status = 'error'),
             SUM(CASE WHEN r.copy = 0 THEN res.attempts END),
             SUM(CASE WHEN r.copy = 0 THEN res.prompt_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.completion_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.total_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.cost_usd END),
             SUM(r.copy),
             SUM(r.copy = 0 AND res.status = 'ok' AND res.attempts = 0)
           FROM rows r LEFT JOIN {results_from} res ON res.key = r.key
           GROUP BY 1, 2 ORDER BY 1, 2"""
    ).fetchall()


def counts(tally: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Rows by state and usage over the rows mapped now (copies carry no usage)."""
    total = [0] * 10
    for row in tally:
        for i, value in enumerate(row[2:]):
            total[i] += value or 0
    mapped, ok, err, attempts, pt, ct, tt, cost, copies, cached = total
    return {
        "mapped": mapped, "ok": ok, "error": err, "prompt_tokens": pt,
        "completion_tokens": ct, "total_tokens": tt, "cost_usd": cost,
        "attempts": attempts, "copies": copies, "cached": cached,
    }


def by_model(tally: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Per-model usage for the sidecar: model, ok, error, requests, tokens, cost, then the rows
    the shared cache answered."""
    return [(model, ok or 0, err or 0, attempts or 0, pt or 0, ct or 0, tt or 0, cost, cached or 0)
            for pending, model, _, ok, err, attempts, pt, ct, tt, cost, _, cached in tally
            if not pending]
