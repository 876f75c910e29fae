"""The pace of one limit (requests or tokens per minute): a GCRA clock, and its rate as learned.

The clock is GCRA, the "virtual scheduling" form of a leaky bucket with no burst: each start
advances the theoretical start of the next (`tat`) by amount * 60 / rate. A start goes when the
clock allows it, so in any window of any length the run sends at most the limit plus one request.

The rate adapts. `adopt_limit` lowers a configured limit that the provider says is too high.
`cut` slows below what the server really took when it said 429 (the "wall"); `recover` climbs
back to the wall in a few seconds and then probes slowly above it, so that a run with no headers
and no configured limit finds the real one.
"""

from __future__ import annotations

import math

from batchrun.sending.limits.book import Book
from batchrun.sending.limits.strict import JITTER, WINDOW

# Pace a hair under the limit: arrivals a little early or late must not push the strictest
# plausible window over (whole requests in it are `StrictWindow`'s part).
SAFETY = WINDOW / (WINDOW + JITTER)
DECREASE = 0.7  # the cut when the server took all we sent and still said 429
TOUCH = 0.9  # the cut when the wall is known: learned before, or measured now
RECOVER_EVERY = 1.0  # seconds between increases after the last cut
CLIMB_STEP = 0.1  # fraction of the wall regained per step while below SAFETY * wall
PROBE_STEP = 0.01  # fraction of the wall added per step above that, looking for room
# Each probe the wall refused again doubles the time between probe steps (up to 2**6 s): a
# provider with no headers is then probed less often, rather than paid a 429 and a cut every
# few seconds; a new wall starts over.
MAX_PROBE_BACKOFF = 6
# A start this late for its slot keeps the schedule, so a busy event loop does not slow the run;
# catching up adds at most half of what SAFETY holds back in the shortest window in use (1 s).
LATE = (1 - SAFETY) / 2


class Pace:
    """One limit: its clock, its rate (None: unpaced), what 429s taught, and the provider's book."""

    def __init__(self, per_minute: float | None) -> None:
        self.ceiling = per_minute  # the most we may use: configured, lowered by headers
        self.rate = per_minute  # current pace (None: unpaced), at most the ceiling
        self.wall: float | None = None  # the rate a 429 told us is too much
        self.tat = -math.inf  # theoretical start of the next request (GCRA)
        self.changed_at = -math.inf  # last cut or recovery step
        self.refused_probes = 0  # probes above the wall that a 429 ended, at this wall
        self.book = Book()  # the provider's own count of this limit

    def interval(self, amount: float) -> float:
        """Seconds of the clock that a start of `amount` takes up."""
        return amount * 60.0 / (self.rate * SAFETY) if self.rate else 0.0

    def ready(self, amount: float, now: float) -> float:
        """Earliest start for `amount` by our pace and by the provider's book."""
        return max(self.tat, self.book.ready(amount, now))

    def take(self, amount: float, now: float) -> None:
        """Book a start now. A start a little late for its slot keeps the schedule (timer
        overshoot must not slow the run down); an idle clock banks nothing: no burst, ever."""
        step = self.interval(amount)
        on_time = now - self.tat <= LATE
        self.tat = (self.tat if on_time else now) + step
        self.book.spend(amount)

    def adopt_limit(self, limit: float) -> None:
        """The provider states its per-minute limit: ours may not be higher."""
        if self.ceiling is None or limit < self.ceiling:
            self.ceiling = limit
        if self.rate is None or self.rate > self.ceiling:
            self.rate = self.ceiling

    def cut(self, measured: float | None, now: float, again: bool = False) -> None:
        """Slow down below what the server took when it said 429 (`measured`, per minute);
        `again`: soon after the last cut, while its window still drains the faster past."""
        pace = self.rate
        took = measured / SAFETY if measured else None  # in the units of `rate`
        # What the server took is the wall: below our pace when the run is too fast; above it
        # just after a cut, as its window still holds the faster past; and with a pace far
        # above what the workers manage, the pace says nothing.
        current = took if took is not None else pace
        if current is None:
            return
        if self.wall is not None and (again or current >= self.wall * TOUCH):
            # Near the wall we already learned, a 429 only confirms it: a small step back is
            # enough, and the wall stays (stray 429s must not wear it down, cut after cut).
            if self.probing and not again:
                self.refused_probes += 1
            self.wall, step = max(self.wall, current), TOUCH
        elif took is not None and pace is not None and took < pace:
            # The server refused part of our pace: what it took is a measured wall, just under.
            self.wall, step, self.refused_probes = current, TOUCH, 0
        else:
            # It took all we sent (a window that let a burst through), or we cannot tell.
            self.wall, step, self.refused_probes = current, DECREASE, 0
        self.rate = max(current * step, 1e-3)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling * step)
        self.changed_at = max(self.changed_at, now)

    def rescale(self, factor: float) -> None:
        """Token estimates changed by `factor`: what this pace learned from them (the wall, a
        rate cut below the ceiling, what we started since the provider's last answer) is in
        the old units; rescale it instead of learning it again through more 429s. A ceiling
        is the provider's own count and stays."""
        self.book.rescale(factor)
        if self.wall is None or self.rate is None:
            return
        self.wall *= factor
        if self.ceiling is None or self.rate < self.ceiling:  # at the ceiling, it is the ceiling
            self.rate *= factor
            if self.ceiling is not None:
                self.rate = min(self.rate, self.ceiling)

    @property
    def probing(self) -> bool:
        """Is the pace above where it climbs back to after a cut, looking for room?"""
        return self.wall is not None and self.rate is not None and self.rate > self.wall * SAFETY

    def recover(self, now: float) -> None:
        """Climb back to the wall quickly, then probe above it slowly, never past the ceiling."""
        if self.wall is None or self.rate is None:
            return
        # A long idle counts as 1000 steps at most.
        self.changed_at = max(self.changed_at, now - 1000 * RECOVER_EVERY)
        while True:
            below = self.wall * SAFETY
            climbing = self.rate < below
            every = RECOVER_EVERY * (1 if climbing else
                                     2 ** min(self.refused_probes, MAX_PROBE_BACKOFF))
            if now - self.changed_at < every:
                return
            self.changed_at += every
            if climbing:
                self.rate = min(below, self.rate + CLIMB_STEP * self.wall)
            else:
                self.rate += PROBE_STEP * self.wall
            if self.ceiling is not None and self.rate >= self.ceiling:
                self.rate = self.ceiling
                return
