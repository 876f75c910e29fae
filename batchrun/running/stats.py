"""Live counters of one run: the sender and the pump count, the progress display and summary read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Pace = tuple[float | None, float | None, int]  # (requests/min, tokens/min, pauses so far)


def _unpaced() -> Pace:
    return None, None, 0


@dataclass
class Stats:
    """Counters of one run; plain integers, updated on the event loop without locks."""

    total_rows: int | None = None
    to_send: int = 0  # distinct requests this run must send
    finished: int = 0  # of those, committed to the journal
    ok: int = 0
    errors: int = 0
    reused: int = 0  # rows answered by an earlier run
    copies: int = 0  # rows answered by an identical request of this run (dedup)
    invalid: int = 0
    mapped: int = 0  # input rows planned so far
    sent: int = 0  # HTTP requests sent
    retries: int = 0
    rate_limited: int = 0  # 429s about rate
    transient: int = 0  # other retryable failed attempts: 5xx, dropped connections, timeouts
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.time)
    producing_done: bool = False
    # The backend's current pace, read by whoever charts it (a backend without a limiter: none).
    pace: Callable[[], Pace] = _unpaced
    # Live Batch API batches: id -> (status, completed, failed, total), for the progress display.
    batches: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
