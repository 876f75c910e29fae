"""Outcome: what became of one request, exactly as the journal stores it and the output shows it."""

from __future__ import annotations

from typing import NamedTuple

OK = "ok"
ERROR = "error"

# Why a row ended in error: decides whether a plain resume sends it again.
ROW_FATAL = "row"  # the request itself is refused (400, content filter, bad row): --retry-failed
EXHAUSTED = "exhausted"  # transient failures outlasted the retries: a resume tries again
# An `ok` outcome with 0 attempts was never sent: the shared cache answered it (`--cache`).


class Outcome(NamedTuple):
    """The final result of one distinct request (shared by every row that asked it).

    A tuple in the journal's column order: recording one is appending it, at thousands a second.
    """

    key: bytes
    status: str
    response: str | None = None
    finish_reason: str = "error"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    model: str | None = None
    response_id: str | None = None
    cost_usd: float | None = None
    parsed: str | None = None  # the parsed answer as JSON text
    finished_at: float = 0.0
    endpoint: str | None = None  # the `[[endpoints]]` name that answered (None: a run without)
    cached_tokens: int | None = None  # prompt tokens the provider served from its cache
    reasoning_tokens: int | None = None  # completion tokens spent on reasoning
    provider_cost: float | None = None  # `usage.cost` as the provider reported it (None: not)
