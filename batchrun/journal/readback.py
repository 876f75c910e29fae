"""Reading back: a run's results by input row, for the output, its usage sidecar and `status`.

Every query joins the run's `rows` (input order; dedup copies marked) to wherever its results are,
`results_from`: `log`, `results` or the view laying one over the other (`Journal._results`). A row
with no result yet is `pending`; a dedup copy shows the shared answer but none of its usage (0
tokens, cost and attempts), so the output's totals are what was billed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple


def output_rows(db: sqlite3.Connection, results_from: str, start: int,
                stop: int) -> list[tuple[Any, ...]]:
    """The result columns of the output for rows start <= idx < stop, in order, then whether the
    shared cache answered the row (an ok result of 0 attempts: `protocol.outcome`), then the
    endpoint and the usage details (their places: `running.output`'s `*_AT`)."""
    return db.execute(
        f"""SELECT res.response, COALESCE(res.finish_reason, 'error'),
             CASE WHEN r.copy THEN 0 * res.prompt_tokens ELSE res.prompt_tokens END,
             CASE WHEN r.copy THEN 0 * res.completion_tokens ELSE res.completion_tokens END,
             CASE WHEN r.copy THEN 0 * res.total_tokens ELSE res.total_tokens END,
             COALESCE(res.status, 'pending'), res.error,
             CASE WHEN r.copy THEN 0 ELSE COALESCE(res.attempts, 0) END,
             res.latency_ms, res.model, res.response_id,
             CASE WHEN r.copy THEN 0 * res.cost_usd ELSE res.cost_usd END, res.parsed,
             res.status = 'ok' AND res.attempts = 0, res.endpoint,
             CASE WHEN r.copy THEN 0 * res.cached_tokens ELSE res.cached_tokens END,
             CASE WHEN r.copy THEN 0 * res.reasoning_tokens ELSE res.reasoning_tokens END,
             CASE WHEN r.copy THEN 0 * res.provider_cost ELSE res.provider_cost END
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
    """One pass over the mapped rows, grouped by (no result yet, endpoint, model): what `counts`
    and `by_model` sum up (`_TALLIED` names the sums)."""
    return db.execute(
        f"""SELECT res.status IS NULL, res.endpoint, COALESCE(res.model, ''), COUNT(*),
             SUM(res.status = 'ok'), SUM(res.status = 'error'),
             SUM(CASE WHEN r.copy = 0 THEN res.attempts END),
             SUM(CASE WHEN r.copy = 0 THEN res.prompt_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.completion_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.total_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.cost_usd END),
             SUM(r.copy),
             SUM(r.copy = 0 AND res.status = 'ok' AND res.attempts = 0),
             SUM(CASE WHEN r.copy = 0 THEN res.cached_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.reasoning_tokens END),
             SUM(CASE WHEN r.copy = 0 THEN res.provider_cost END)
           FROM rows r LEFT JOIN {results_from} res ON res.key = r.key
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    ).fetchall()


# What each tally sums, after (no result yet, endpoint, model); SQL's SUM is NULL over no value:
# a detail no answer reported stays None.
_TALLIED = ("mapped", "ok", "error", "attempts", "prompt_tokens", "completion_tokens",
            "total_tokens", "cost_usd", "copies", "cached", "cached_tokens", "reasoning_tokens",
            "provider_cost")
_KNOWN_OR_NONE = ("cost_usd", "cached_tokens", "reasoning_tokens", "provider_cost")


class UsageRow(NamedTuple):
    """One row of the usage sidecar: what one model (at one endpoint) used."""

    endpoint: str | None
    model: str
    rows_ok: int
    rows_error: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    provider_cost: float | None
    rows_cached: int = 0


def counts(tally: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Rows by state and usage over the rows mapped now (copies carry no usage); the details
    (cached and reasoning tokens, provider cost) are None when no answer reported them; and
    `endpoints`, per endpoint name, what the rows it settled used (empty: a run without)."""
    found = _sums(row[3:] for row in tally)
    found["cost_usd"] = found["cost_usd"] or 0  # as before: 0 when nothing is priced
    settled: dict[str, list[tuple[Any, ...]]] = {}
    for row in tally:
        if not row[0] and row[1] is not None:
            settled.setdefault(row[1], []).append(row[3:])
    found["endpoints"] = {name: _sums(rows) for name, rows in sorted(settled.items())}
    return found


def _sums(rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The tallied figures added up over `rows` (each in `_TALLIED` order)."""
    total: list[Any] = [None if name in _KNOWN_OR_NONE else 0 for name in _TALLIED]
    for row in rows:
        for i, value in enumerate(row):
            if value is not None:
                total[i] = value if total[i] is None else total[i] + value
    return dict(zip(_TALLIED, total, strict=True))


def by_model(tally: Sequence[tuple[Any, ...]], endpoints: bool = False) -> list[UsageRow]:
    """Per-model usage for the sidecar (per endpoint and model with `endpoints`)."""
    groups: dict[tuple[str | None, str], list[Sequence[Any]]] = {}
    for pending, endpoint, model, *sums in tally:
        if not pending:
            groups.setdefault((endpoint if endpoints else None, model), []).append(sums)
    found = []
    for (endpoint, model), rows in groups.items():
        s = _sums(rows)
        found.append(UsageRow(endpoint, model, s["ok"], s["error"], s["attempts"],
                              s["prompt_tokens"], s["completion_tokens"], s["total_tokens"],
                              s["cost_usd"], s["cached_tokens"], s["reasoning_tokens"],
                              s["provider_cost"], s["cached"]))
    return sorted(found, key=lambda u: (u.endpoint or "", u.model))
