"""The provider's own book of one limit, from its `x-ratelimit-*` headers.

`x-ratelimit-limit-*` states the limit; `x-ratelimit-remaining-*` with its `reset` is the room the
provider had left as of its answer. When that room, less what we started since, is less than the
next request needs, the start holds until enough frees up: the provider's count wins over ours.
"""

from __future__ import annotations

import math

from multidict import istr

SNAPSHOT_LIFE = 1.0  # a remaining count sent without its reset is trusted this long

# istr: multidict looks these up without case-folding them for every answer.
REQUEST_HEADERS = tuple(istr(f"x-ratelimit-{what}-requests") for what in ("limit", "remaining", "reset"))
TOKEN_HEADERS = tuple(istr(f"x-ratelimit-{what}-tokens") for what in ("limit", "remaining", "reset"))


class Book:
    """The provider's remaining allowance as of its last answer, and what we started since."""

    def __init__(self) -> None:
        self._room = 0.0
        self._room_at = 0.0
        self.until = -math.inf  # the book holds starts until then (its reset)
        self._refill: float | None = None  # per second, by the provider's limit and reset
        self._spent = 0.0  # what we started since that answer

    def ready(self, amount: float, now: float) -> float:
        """Earliest start for `amount` by the provider's book (-inf: it holds nothing)."""
        if now >= self.until:
            return -math.inf
        refill = self._refill
        room = self._room - self._spent + (now - self._room_at) * (refill or 0.0)
        if room >= amount:
            return -math.inf
        # The allowance comes back steadily until the reset, when all of it is back.
        free_at = now + (amount - room) / refill if refill else self.until
        return min(free_at, self.until)

    def spend(self, amount: float) -> None:
        """We started `amount` since the provider's last answer."""
        self._spent += amount

    def rescale(self, factor: float) -> None:
        """Token estimates changed by `factor`: what we started since is counted anew."""
        self._spent *= factor

    def snapshot(self, remaining: float, reset: float | None, limit: float | None,
                 now: float) -> None:
        """The provider's remaining allowance as of now, valid until its reset."""
        self._room, self._room_at, self._spent = remaining, now, 0.0
        self.until = now + (reset if reset is not None else SNAPSHOT_LIFE)
        # OpenAI's reset is when the allowance is whole again, so it refills at this pace.
        self._refill = None
        if limit and reset and limit > remaining:
            self._refill = (limit - remaining) / reset


def number(value: str | None) -> float | None:
    """A header's finite number, or None."""
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None
