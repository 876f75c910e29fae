"""Limiter: smooth pacing of request starts under requests- and tokens-per-minute limits, and a
cap on requests in flight, learning from the provider's answers. One per run.

It composes the parts in `batchrun.sending.limits`: a `Pace` per limit (GCRA: a request's
tokens are its calibrated prompt estimate plus `max_tokens`, held for good, as providers charge
at arrival), the `StrictWindow` (whole requests within a second's allowance, until the provider
shows it counts over longer windows), the provider's `Book` from its headers, the `Gate` that
starts wait at, the `RecentStarts` that a cut is measured against, the `Evidence` test for 429s,
and the `ConcurrencyCap`. What is left here is how answers teach them:

- `x-ratelimit-limit-*` lowers a configured limit that is too high (or sets one where none was
  given); `x-ratelimit-remaining-*` with its reset is the provider's own book.
- A 429 about rate that shows the run is too fast (`Evidence`) pauses every start for its
  retry-after, and unless only the headers said so, also cuts the pace below what the server
  really took; a stray 429 delays only its own row. A 429 about concurrent requests lowers the
  cap on requests in flight instead.
- A 429 also tells the strictest window whether the provider counts per second after all, or
  how far its arrivals came closer together than their starts.
- Token estimates that the calibration changes are booked again for the recent starts, and what
  the paces learned in the old units is rescaled with them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from batchrun.protocol.retry import parse_duration
from batchrun.sending.limits.book import REQUEST_HEADERS, TOKEN_HEADERS, number
from batchrun.sending.limits.concurrency import ConcurrencyCap
from batchrun.sending.limits.evidence import NOISE, SLICE, Evidence
from batchrun.sending.limits.gate import Gate
from batchrun.sending.limits.pace import LATE, SAFETY, Pace
from batchrun.sending.limits.strict import StrictWindow
from batchrun.sending.limits.window import RecentStarts

__all__ = ["DEFAULT_PAUSE", "LATE", "NOISE", "SAFETY", "SLICE", "Limiter"]

DEFAULT_PAUSE = 1.0  # a 429 without retry-after pauses this long


class Limiter:
    """Hands out start times for requests; one per run, shared by all workers."""

    def __init__(self, rpm: float | None, tpm: float | None, concurrency: int | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        self._clock = clock or time.monotonic
        self.requests = Pace(rpm)
        self.tokens = Pace(tpm)
        self.strict = StrictWindow()
        self.cap = ConcurrencyCap(concurrency)
        self.starts = RecentStarts()
        self.evidence = Evidence()
        self.gate = Gate(self.requests, self.tokens, self.strict, self.cap, self.starts,
                         self._clock, sleep or asyncio.sleep)
        self.pauses = 0  # pauses of every start (a stray 429 pauses none)
        self.cuts = 0  # cuts of the pace

    # --- the pace and the gate ----------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """Current request pace per minute (None: unpaced)."""
        return self.requests.rate

    @property
    def tpm(self) -> float | None:
        """Current token pace per minute (None: unpaced)."""
        return self.tokens.rate

    def wait_for(self, tokens: int) -> float:
        """Seconds until a request of `tokens` may start (0: now). Books nothing."""
        return self.gate.wait_for(tokens)

    def take(self, tokens: int) -> float:
        """Book a start of a request of `tokens` now; returns the start time."""
        return self.gate.take(tokens)

    def start_now(self, tokens: int) -> float | None:
        """Book a start at once if nothing must wait; its start time, or None: `wait_turn`."""
        return self.gate.start_now(tokens)

    async def wait_turn(self, tokens: int) -> float:
        """`acquire` after `start_now` said no: wait at the gate for this request's turn."""
        return await self.gate.wait_turn(tokens)

    async def acquire(self, tokens: int) -> float:
        """Wait for this request's turn and book it; returns its start time on `now()`'s clock."""
        started = self.gate.start_now(tokens)
        if started is not None:
            return started
        return await self.gate.wait_turn(tokens)

    def release(self) -> None:
        """A request `acquire` let through has its answer (or failed): its slot is free."""
        self.gate.release()

    def close(self) -> None:
        """The run is stopping: let every waiting worker through at once (it will not send)."""
        self.gate.close()

    def oversize(self, tokens: int) -> str | None:
        """Why a request of `tokens` can never be sent under the token limit, or None."""
        limit = self.tokens.ceiling
        if limit is None or tokens <= limit:
            return None
        return (
            f"one request reserves {tokens} tokens (prompt estimate + max_tokens) but the limit "
            f"is {limit:g} tokens per minute, so it can never be sent; lower --max-tokens, "
            "shorten the prompt, or raise --tpm if the provider allows more"
        )

    # --- learning -----------------------------------------------------------------------

    def recalibrated(self, factor: float) -> None:
        """Token estimates changed by `factor` (the provider counts unlike us): the requests
        started in the last seconds were booked at the old estimate, so book the difference on
        the token pace now, and hold and measure them at the new one. What the pace learned
        from them (its wall, a cut rate) is rescaled too, not learned again through 429s."""
        now = self._clock()
        self.starts.forget(now)
        self.gate.scale *= factor  # and the starts waiting at the gate are booked at the new one
        extra = self.starts.rescale(factor)
        self.strict.rescale(factor)
        self.strict.unsettled(now)
        pace = self.tokens
        if pace.rate and extra:
            pace.tat = max(pace.tat + pace.interval(extra), now - pace.interval(1))
        pace.rescale(factor)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Count an answer (of any kind, headers or none) and learn from its `x-ratelimit-*`
        headers: the real limits and the provider's remaining room."""
        now = self._clock()
        self.evidence.answer(now)
        self.starts.forget(now)  # starts that took the open way were not forgotten there
        if not headers:
            return
        spent = False
        for (limit_name, remaining_name, reset_name), pace, need in (
            (REQUEST_HEADERS, self.requests, 1), (TOKEN_HEADERS, self.tokens, self.starts.latest)
        ):
            limit_text = headers.get(limit_name)
            remaining_text = headers.get(remaining_name)
            if limit_text is None and remaining_text is None:
                continue
            limit = number(limit_text)
            if limit is not None and limit > 0:
                pace.adopt_limit(limit)
            remaining = number(remaining_text)
            if remaining is not None:
                reset = parse_duration(headers.get(reset_name) or "")
                pace.book.snapshot(max(0.0, remaining), reset, limit, now)
                if reset is not None:
                    self.strict.shown(reset)
                spent = spent or remaining < max(need, 1)
        self.evidence.spent = spent

    def rate_limited_by_server(self, retry_after: float | None, sent_at: float | None = None,
                               concurrent: bool = False) -> bool:
        """A 429 about rate, for a request started at `sent_at`, whose answer `observe` has just
        counted. Returns whether it paused every start (and maybe cut the pace): on evidence
        that the run is too fast. Otherwise it was a stray 429, and only its own row waits."""
        now = self._clock()
        if sent_at is not None:
            self.starts.refused(sent_at)
        if concurrent:
            self._pause(retry_after, now)
            self.cap.refused(self.gate.in_flight, now)
            return True
        # Does the provider count per second after all, or did arrivals come closer together?
        self.strict.refused(sent_at, retry_after, now)
        fresh = self.evidence.limited(sent_at, now)
        # Above a wall it learned before, the run was looking for room: one 429 is the answer.
        probing = fresh and (self.requests.probing or self.tokens.probing)
        storm = self.evidence.storm(self.gate.in_flight)
        if not (storm or probing or self.evidence.spent):
            return False
        self._pause(retry_after, now)
        if storm or probing:
            self._cut(now)
        return True

    def _pause(self, retry_after: float | None, now: float) -> None:
        """Hold every start for the retry-after."""
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE
        if self.gate.pause(now + pause):
            self.pauses += 1
            self.strict.unsettled(now + pause)

    def _cut(self, now: float) -> None:
        """Slow the pace below what the run really sent at."""
        again = self.evidence.cut(now)
        self.cuts += 1
        self.strict.cut(now)
        request_rate, token_rate = self.starts.measured(now)
        self.requests.cut(request_rate, now, again)
        if self.tokens.rate is not None:
            self.tokens.cut(token_rate, now, again)
