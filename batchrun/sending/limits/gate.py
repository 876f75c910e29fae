"""The admission gate: a start waits here until the request and token paces, the strictest
plausible window, the provider's books, any pause and the cap on requests in flight all let it
go; then it is booked.

Starts pass the gate one at a time, so a pause or a rate cut applies to the very next start, not
only after requests already booked at the old pace. With nothing to wait for (no limit known, no
pause, room under the configured cap) a start skips the gate: `start_now`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from batchrun.sending.limits.concurrency import ConcurrencyCap
from batchrun.sending.limits.pace import Pace
from batchrun.sending.limits.strict import StrictWindow
from batchrun.sending.limits.window import RecentStarts


class Gate:
    """Hands out start times, one start at a time; `in_flight` counts the requests let through."""

    def __init__(self, requests: Pace, tokens: Pace, strict: StrictWindow, cap: ConcurrencyCap,
                 starts: RecentStarts, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[object]]) -> None:
        self._requests = requests
        self._tokens = tokens
        self._strict = strict
        self._cap = cap
        self._starts = starts
        self._clock = clock
        self._sleep = sleep
        self.in_flight = 0
        self.paused_until = -math.inf
        self.scale = 1.0  # token estimates now against the run's first ones (recalibrated)
        self._freed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._waiting = 0  # starts waiting for a request in flight to finish
        self._closed = False

    @property
    def busy(self) -> bool:
        """Is a start waiting at the gate?"""
        return self._lock.locked()

    def wait_for(self, tokens: int) -> float:
        """Seconds until a request of `tokens` may start (0: now). Books nothing."""
        now = self._clock()
        requests, pace = self._requests, self._tokens
        requests.recover(now)
        pace.recover(now)
        start = max(self.paused_until, requests.ready(1, now), pace.ready(tokens, now),
                    self._strict.ready(tokens, requests.rate, pace.rate, now))
        return max(0.0, start - now)

    def take(self, tokens: int) -> float:
        """Book a start of a request of `tokens` now; returns the start time."""
        now = self._clock()
        requests, pace = self._requests, self._tokens
        requests.take(1, now)
        pace.take(tokens, now)
        self._strict.add(now, tokens, requests.rate, pace.rate)
        self._starts.add(now, tokens)
        self._starts.forget(now)
        return now

    def start_now(self, tokens: int) -> float | None:
        """Book a start at once if nothing paces, holds or caps it and no start is waiting before
        it (the gate and the paces would say "now"); returns its start time, or None: `wait_turn`.

        At thousands of starts a second, asking the gate and the paces cost a tenth of a run's
        time against a fast server.
        """
        now = self._clock()
        if not self._open(now):
            return None
        self.in_flight += 1
        self._starts.add(now, tokens)  # (nothing paces it: the strictest window has no say)
        return now

    async def wait_turn(self, tokens: int) -> float:
        """Wait at the gate for this request's turn and book it; returns its start time.

        A start may wait here for seconds while answers recalibrate the token estimates: it is
        booked at the estimate as of its start, not as of when it began to wait (a run's first
        answers often show the provider counting twice what we thought, and every start waiting
        then would otherwise go at the old pace)."""
        scale = self.scale
        async with self._lock:
            # One worker waits at a time, and re-reads the state when it wakes: a 429 that came
            # in meanwhile holds this start too.
            while not self._closed:
                tokens = round(tokens * self.scale / scale)
                scale = self.scale
                if self._cap.full(self.in_flight, self._clock()):
                    self._freed.clear()
                    self._waiting += 1
                    try:
                        await self._freed.wait()
                    finally:
                        self._waiting -= 1
                    continue
                wait = self.wait_for(tokens)
                if wait <= 0:
                    break
                await self._sleep(wait)
            self.in_flight += 1
            return self.take(tokens)

    def _open(self, now: float) -> bool:
        """May a start go now without the gate? Only when no pace binds (no rate, no provider
        book in force), no pause holds, the concurrency cap is the configured one and has room,
        and no other start waits at the gate."""
        requests, tokens = self._requests, self._tokens
        return (
            requests.rate is None and tokens.rate is None
            and now >= self.paused_until
            and now >= requests.book.until and now >= tokens.book.until
            and not self._closed and not self._lock.locked()
            and self._cap.open(self.in_flight)
        )

    def release(self) -> None:
        """A request let through has its answer (or failed): its slot is free."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._waiting:
            self._freed.set()

    def close(self) -> None:
        """The run is stopping: let every waiting start through at once (it will not send)."""
        self._closed = True
        self._freed.set()

    def pause(self, until: float) -> bool:
        """Hold every start until then; whether that holds them longer than before. Recovery of
        the paces counts from the pause's end."""
        if until <= self.paused_until:
            return False
        self.paused_until = until
        for pace in (self._requests, self._tokens):
            pace.changed_at = max(pace.changed_at, until)
        return True
