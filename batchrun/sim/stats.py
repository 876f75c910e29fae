"""The simulator's counters, read by tests: requests, statuses, and every token billed, per prompt
and per key."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from batchrun.sim.usage import Billed
from batchrun.sim.validate import ChatRequest

ARRIVALS_KEPT = 1_000_000  # arrival times kept for rate analysis


@dataclass
class KeyStats:
    """One key's counters (`SimStats.by_key`); `billed_*` and `spent_usd` count its 200 answers."""

    requests: int = 0
    ok: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0  # 429s sent to this key: its own limits, the simulator's, stray ones
    no_credits: int = 0  # 402s for a used-up balance
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    billed_cached_tokens: int = 0
    billed_reasoning_tokens: int = 0
    spent_usd: float = 0.0  # what its answers cost at the simulator's prices
    max_in_flight: int = 0

    def count(self, status: int) -> None:
        """Count one response sent to this key."""
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if status == 429:
            self.rate_limited += 1
        elif status == 402:
            self.no_credits += 1


@dataclass
class SimStats:
    """Counters read by tests; `billed_*` sum the usage of 200 answers actually sent."""

    requests: int = 0
    ok: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0  # every 429 sent, stray ones included
    # When the first 200 answer left (the client's first calibration), and the arrivals that the
    # limits refused with a 429 (stray 429s are not among them).
    first_answer_at: float | None = None
    refused_arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))
    stray_429s: int = 0
    dropped: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    billed_total_tokens: int = 0
    billed_by_prompt: dict[str, int] = field(default_factory=dict)
    billed_cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens, summed
    billed_reasoning_tokens: int = 0  # usage.completion_tokens_details.reasoning_tokens, summed
    billed_usd: float = 0.0  # the answers' cost at the simulator's prices (usage.cost when reported)
    # Per key, as sent in `Authorization: Bearer KEY` ("" for a simulator without keys).
    by_key: dict[str, KeyStats] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    images_data_url: int = 0
    images_url: int = 0
    files_uploaded: int = 0
    batches_created: int = 0
    batch_lines_billed: int = 0  # answers billed through the Batch API (also in billed_*)
    # Authorization headers as received ("" when none), counted: tests see where a key went.
    authorizations: dict[str, int] = field(default_factory=dict)
    # Bounded so a long `batchrun simulate` session does not grow without end.
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))

    def count(self, status: int) -> None:
        """Count one response sent with this HTTP status."""
        self.status_counts[status] = self.status_counts.get(status, 0) + 1

    def key(self, key: str) -> KeyStats:
        """The counters of `key`, created at its first request."""
        stats = self.by_key.get(key)
        if stats is None:
            stats = self.by_key[key] = KeyStats()
        return stats

    def bill(self, req: ChatRequest, usage: Billed, key: str | None = None) -> None:
        """Bill one answer: its usage, and once more for its prompt (tests prove "billed once");
        also to its key's counters (Batch API lines have none)."""
        self.ok += 1
        self.billed_prompt_tokens += req.prompt_tokens
        self.billed_completion_tokens += usage.completion_tokens
        self.billed_total_tokens += req.prompt_tokens + usage.completion_tokens
        self.billed_by_prompt[req.user_text] = self.billed_by_prompt.get(req.user_text, 0) + 1
        self.billed_cached_tokens += usage.cached_tokens
        self.billed_reasoning_tokens += usage.reasoning_tokens
        self.billed_usd += usage.cost
        if key is not None:
            mine = self.key(key)
            mine.ok += 1
            mine.billed_prompt_tokens += req.prompt_tokens
            mine.billed_completion_tokens += usage.completion_tokens
            mine.billed_cached_tokens += usage.cached_tokens
            mine.billed_reasoning_tokens += usage.reasoning_tokens
            mine.spent_usd += usage.cost
