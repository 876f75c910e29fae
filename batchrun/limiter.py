"""Limiter: smooth pacing of request starts under requests- and tokens-per-minute limits.

Each request is given a start time on two clocks (GCRA, the "virtual scheduling" form of a leaky
bucket with no burst): the request clock advances by 60/rpm per request, the token clock by
tokens*60/tpm. A request starts at the later of its two slots, so in any window, of any length,
the run never sends more than the limits allow; there is no start-up burst for a strict provider
to punish. Rates adapt for the whole run: the provider's `x-ratelimit-limit-*` headers lower a
configured limit that is too high, `x-ratelimit-remaining-*` near zero holds sending until the
reset, and a 429 pauses everyone for its retry-after and cuts the rate, which then recovers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping

from .retry import parse_duration

# Pace a hair under the limit: arrival jitter must not push a strict sliding window over.
SAFETY = 0.97
DECREASE = 0.7  # multiplicative decrease on a 429
RECOVER_EVERY = 2.0  # seconds between additive increases after the last 429
RECOVER_STEP = 0.05  # fraction of the ceiling regained per step
MEASURE_WINDOW = 5.0  # seconds of send history used to guess a rate when none is configured


class Limiter:
    """Hands out start times for requests; one per run, shared by all workers."""

    def __init__(self, rpm: float | None, tpm: float | None,
                 clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or asyncio.get_running_loop().time
        self.rpm_ceiling = rpm  # the most we may use: configured, lowered by headers
        self.tpm_ceiling = tpm
        self.rpm = rpm  # current pacing rate (<= ceiling after 429s)
        self.tpm = tpm
        now = self._clock()
        self._next_request = now
        self._next_token = now
        self._paused_until = now
        self._last_cut = -1e9
        self._last_recover = now
        self._sent: deque[float] = deque()
        self.pauses = 0
        self.rate_limited = 0

    def slot(self, tokens: int) -> float:
        """Reserve the earliest start time for a request of `tokens`; returns seconds to wait."""
        now = self._clock()
        self._maybe_recover(now)
        start = max(now, self._next_request, self._next_token, self._paused_until)
        if self.rpm:
            self._next_request = start + 60.0 / (self.rpm * SAFETY)
        if self.tpm:
            self._next_token = start + tokens * 60.0 / (self.tpm * SAFETY)
        self._sent.append(start)
        while self._sent and self._sent[0] < now - MEASURE_WINDOW:
            self._sent.popleft()
        return start - now

    async def acquire(self, tokens: int) -> None:
        """Wait for this request's slot."""
        wait = self.slot(tokens)
        if wait > 0:
            await asyncio.sleep(wait)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from `x-ratelimit-*` headers: real limits, and remaining budget near zero."""
        if not headers:
            return
        now = self._clock()
        for kind in ("requests", "tokens"):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit is not None and limit > 0:
                self._adopt_ceiling(kind, limit)
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", "") or "")
            if remaining is not None and reset is not None and remaining <= 0:
                # The provider's books say this window is spent: nobody starts before it resets.
                self._paused_until = max(self._paused_until, now + reset)

    def _adopt_ceiling(self, kind: str, limit: float) -> None:
        # Headers state per-minute limits (OpenAI); a provider's real limit lowers ours.
        if kind == "requests":
            if self.rpm_ceiling is None or limit < self.rpm_ceiling:
                self.rpm_ceiling = limit
                self.rpm = min(self.rpm or limit, limit)
        else:
            if self.tpm_ceiling is None or limit < self.tpm_ceiling:
                self.tpm_ceiling = limit
                self.tpm = min(self.tpm or limit, limit)

    def rate_limited_by_server(self, retry_after: float | None) -> None:
        """A 429 about rate: pause everyone for its retry-after and slow the whole run down."""
        now = self._clock()
        self.rate_limited += 1
        pause = retry_after if retry_after is not None else 1.0
        if now + pause > self._paused_until:
            self._paused_until = now + pause
            self.pauses += 1
        if now - self._last_cut < 1.0:
            return  # one cut per burst of 429s: they describe the same overload
        self._last_cut = now
        self._last_recover = now
        observed = len(self._sent) / MEASURE_WINDOW * 60.0 if self._sent else None
        current = self.rpm or observed
        if current:
            self.rpm = max(1.0, current * DECREASE)
            if self.rpm_ceiling is None:
                self.rpm_ceiling = current  # no configured limit: what we were doing is too much
        if self.tpm:
            self.tpm = max(1.0, self.tpm * DECREASE)

    def _maybe_recover(self, now: float) -> None:
        if now - self._last_recover < RECOVER_EVERY or now - self._last_cut < RECOVER_EVERY:
            return
        self._last_recover = now
        if self.rpm and self.rpm_ceiling and self.rpm < self.rpm_ceiling:
            self.rpm = min(self.rpm_ceiling, self.rpm + RECOVER_STEP * self.rpm_ceiling)
        if self.tpm and self.tpm_ceiling and self.tpm < self.tpm_ceiling:
            self.tpm = min(self.tpm_ceiling, self.tpm + RECOVER_STEP * self.tpm_ceiling)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
