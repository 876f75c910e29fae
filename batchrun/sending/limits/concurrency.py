"""The adaptive cap on requests in flight: the configured concurrency, lowered to what the server
allowed when it answers 429 about concurrent requests, creeping back up slowly after."""

from __future__ import annotations

import math

CONCURRENCY_RECOVER_EVERY = 5.0  # seconds between raising a learned concurrency cap by one


class ConcurrencyCap:
    """How many requests may be in flight (None: no cap)."""

    def __init__(self, concurrency: int | None) -> None:
        self.limit = concurrency  # lowered by the server's 429s
        self.ceiling = concurrency  # the configured cap
        self._changed = -math.inf

    def full(self, in_flight: int, now: float) -> bool:
        """Are as many requests in flight as the server allows? The cap creeps back up slowly
        towards the configured one: each probe costs one 429 at most."""
        cap = self.limit
        if cap is None:
            return False
        ceiling = self.ceiling
        if ceiling is not None and cap < ceiling and now - self._changed >= CONCURRENCY_RECOVER_EVERY:
            self.limit = cap = cap + 1
            self._changed = now
        return in_flight >= cap

    def open(self, in_flight: int) -> bool:
        """Room for one more, at the configured cap (a learned one is for `full` to judge)."""
        return self.limit is None or (self.limit == self.ceiling and in_flight < self.limit)

    def refused(self, in_flight: int, now: float) -> None:
        """The server counts requests in flight, not their pace: keep to as many as it allowed.
        The refused one is already released, so `in_flight` is what the server holds now; such
        429s come back at once, so even one for a request sent long ago tells the truth."""
        cap = max(1, in_flight)
        if self.limit is None or cap < self.limit:
            self.limit = cap
        self._changed = now
