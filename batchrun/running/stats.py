"""Live counters of one run: the sender and the pump count, the progress display and summary read.

`Counts` names, once, the counters a run adds up as it sends; everything that moves them around
as a whole derives from it: the timeline samples their change (the journal's `timeline` columns
of the same names), a Ray worker reports them to the ledger actor, and the driver adds up every
worker's. `Stats` is `Counts` plus what only the run itself knows.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field

Pace = tuple[float | None, float | None, int]  # (requests/min, tokens/min, pauses so far)


def _unpaced() -> Pace:
    return None, None, 0


@dataclass
class Counts:
    """What a run adds up as it sends: plain numbers, added to on the event loop without locks."""

    sent: int = 0  # HTTP requests sent (first attempts and retries)
    retries: int = 0
    rate_limited: int = 0  # 429s about rate
    transient: int = 0  # other retryable failed attempts: 5xx, dropped connections, timeouts
    ok: int = 0  # rows answered
    errors: int = 0  # rows failed for good
    finished: int = 0  # distinct requests to send, committed to the journal
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def counts(self) -> Counts:
        """These counters as they are now, alone (of a `Stats`: without the rest of it)."""
        return Counts(self.sent, self.retries, self.rate_limited, self.transient, self.ok,
                      self.errors, self.finished, self.prompt_tokens, self.completion_tokens,
                      self.cost_usd)

    def plus(self, other: Counts) -> Counts:
        """Each counter added to `other`'s."""
        return Counts(*map(operator.add, astuple(self.counts()), astuple(other.counts())))

    def minus(self, other: Counts) -> Counts:
        """What each counter grew by since `other` was taken."""
        return Counts(*map(operator.sub, astuple(self.counts()), astuple(other.counts())))

    def set_counts(self, counts: Counts) -> None:
        """Set these counters to `counts` (the Ray driver: its plan's, plus what workers did)."""
        # Counts' own __init__ assigns exactly its fields, in order, whatever `self` is.
        Counts.__init__(self, *astuple(counts.counts()))


@dataclass
class Stats(Counts):
    """Counters of one run: `Counts`, and the run's own (its plan, what is in flight, its pace)."""

    total_rows: int | None = None
    to_send: int = 0  # distinct requests this run must send
    reused: int = 0  # rows answered by an earlier run
    cached: int = 0  # requests answered from the shared cache (--cache), at no cost
    copies: int = 0  # rows answered by an identical request of this run (dedup)
    invalid: int = 0
    mapped: int = 0  # input rows planned so far
    in_flight: int = 0
    started: float = field(default_factory=time.time)
    producing_done: bool = False
    # The backend's current pace, read by whoever charts it (a backend without a limiter: none).
    pace: Callable[[], Pace] = _unpaced
    # Live Batch API batches: id -> (status, completed, failed, total), for the progress display.
    batches: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    # Several endpoints: each one's own counters by name (the run's are their sum, `Tally`), and
    # an endpoint's limits as configured (requests, tokens per minute) for its timeline.
    endpoints: dict[str, Stats] = field(default_factory=dict)
    limits: tuple[float | None, float | None] = (None, None)


# What the endpoints' counters add to the run's: their sending. Rows (ok, errors, finished) are
# counted once, by the pool, when a row is settled: a row failed on one endpoint may be
# answered by the next.
TALLIED = ("sent", "retries", "rate_limited", "transient", "prompt_tokens", "completion_tokens",
           "cost_usd")


class Tally:
    """Adds what each part (an endpoint's `Stats`) sent since the last fold to the whole's."""

    def __init__(self, whole: Stats, parts: list[Stats]) -> None:
        self._whole = whole
        self._parts = parts
        self._last = [Counts() for _ in parts]

    def fold(self) -> None:
        """Bring the whole's sending counters and requests in flight up to date."""
        whole = self._whole
        for i, part in enumerate(self._parts):
            now = part.counts()
            grown = now.minus(self._last[i])
            self._last[i] = now
            for name in TALLIED:
                setattr(whole, name, getattr(whole, name) + getattr(grown, name))
        whole.in_flight = sum(part.in_flight for part in self._parts)
