"""The strictest plausible window: whole requests within one second's allowance.

A provider may enforce a per-minute limit over much shorter windows (OpenAI says so); the
strictest plausible is one second. Its allowance is the pace's per-minute rate / 60, and a window
takes whole requests: when one request is a tenth of it, the pace alone (GCRA, which lets any
window hold the limit plus one request) puts an eleventh in now and then, and a strict provider
refuses it. So no start may go while the starts of the last WINDOW + JITTER seconds and it hold
more than one window's allowance (and more than one request, when one request is more than the
allowance). The margin this holds back is the part of a window that whole requests cannot fill,
plus `jitter` of it for arrivals that come a little early or late; it is not a fixed share.
`jitter` starts at JITTER and learns from the provider: a 429 for a start that filled a window
to its allowance, whose retry-after is a matter of milliseconds, says that the arrivals came that
much closer together than their starts: the window grows by it (up to MAX_JITTER), and shrinks
back by half after each JITTER_SETTLES seconds without another. A cut of the pace says those
429s were the pace's doing, not the arrivals': the window is back to JITTER.

A provider counting over longer windows (ten seconds, a minute) or with a bucket takes more:
with coarse requests the whole-request rule costs the run up to a sixth of its pace there. When
it costs more than PROBE_GAIN and nothing has troubled the run for PROBE_AFTER seconds (or the
provider's headers said its allowance comes back over more than a second), the run tries going
without it (the pace alone still holds it under the limit). A 429 for a start that only that let
through says the provider does count per second: the rule is back, and the next try waits twice
as long as the last.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 1.0  # seconds: the strictest plausible window, assumed until the provider shows more
JITTER = 0.03  # seconds an arrival may come earlier or later than its start says, held back
MAX_JITTER = 0.06  # the most that the provider's 429s teach: beyond, rare late arrivals cost less as 429s
JITTER_SETTLES = 60.0  # seconds without such a 429 before the learned jitter halves
PROBE_GAIN = 0.02  # try without the rule only when it holds back more than this share
PROBE_AFTER = 3.0  # seconds with no pause, cut or recalibration before such a try
PROBE_BACKOFF = 60.0  # seconds before trying again after the first try failed (then doubling)


class StrictWindow:
    """The starts of the last WINDOW + JITTER seconds, held to one window's allowance."""

    def __init__(self) -> None:
        self._held: deque[tuple[float, float]] = deque()  # (start, tokens)
        self._tokens = 0.0  # their sum
        self.jitter = JITTER
        self._jitter_at = -math.inf  # when a 429 last taught it
        self._full: deque[float] = deque()  # starts that filled the window to its allowance
        self.lenient = False  # trying without the rule
        self._beyond: deque[float] = deque()  # starts that only going without it let through
        self._settled_at = -math.inf  # the run has been calm since then (-inf: not yet started)
        self._next_try = -math.inf
        self._shown = False  # the provider's headers showed a window longer than WINDOW
        self.tries = 0  # tries without the rule so far
        self.failed = 0  # of them, ended by a 429

    def ready(self, tokens: float, rpm: float | None, tpm: float | None, now: float) -> float:
        """Earliest start for a request of `tokens` by the rule (-inf: it holds nothing)."""
        self._forget(now)
        if self._settled_at == -math.inf:
            self._settled_at = now  # the first start: calm counts from here
        if self.lenient or (rpm is None and tpm is None):
            return -math.inf
        if self.jitter > JITTER and now - self._jitter_at >= JITTER_SETTLES:
            self.jitter = max(JITTER, (self.jitter + JITTER) / 2)
            self._jitter_at = now
        if self._should_try(tokens, rpm, tpm, now):
            self.lenient, self.tries = True, self.tries + 1
            return -math.inf
        requests = _allowance(1, rpm)
        allowed = _allowance(tokens, tpm)
        held, total = self._held, self._tokens
        if len(held) + 1 <= requests and total + tokens <= allowed:
            return -math.inf
        # The oldest starts must leave the window until both fit.
        count, index = len(held), 0
        while index < len(held) and (count + 1 > requests or total + tokens > allowed):
            total -= held[index][1]
            count -= 1
            index += 1
        return held[index - 1][0] + WINDOW + self.jitter

    def add(self, at: float, tokens: float, rpm: float | None, tpm: float | None) -> None:
        """A request of `tokens` started at `at`. Note whether it filled the window to its
        allowance, or (going without the rule) went beyond it."""
        self._forget(at)
        count, total = len(self._held) + 1, self._tokens + tokens
        requests, allowed = _allowance(1, rpm), _allowance(tokens, tpm)
        if self.lenient and (count > requests or total > allowed):
            self._beyond.append(at)
        elif count + 1 > requests or total + tokens > allowed:
            self._full.append(at)
        self._held.append((at, tokens))
        self._tokens = total

    def refused(self, sent_at: float | None, retry_after: float | None, now: float) -> None:
        """A 429 about rate for the request started at `sent_at`. If only going without the rule
        let it through, the provider counts per second: the rule is back. If the rule let it
        fill a window and the provider asks for a few milliseconds, the arrivals came closer
        together than the starts by that much: hold that much more of each window."""
        if sent_at is None:
            return
        if self.lenient and sent_at in self._beyond:
            self.lenient = False
            self.failed += 1
            self._shown = False  # whatever its headers say, it counts per second
            self._beyond.clear()
            self._next_try = now + PROBE_BACKOFF * 2 ** (self.failed - 1)
        elif (not self.lenient and retry_after is not None and retry_after < MAX_JITTER
              and sent_at in self._full):
            self.jitter = min(MAX_JITTER, self.jitter + retry_after)
            self._jitter_at = now

    def shown(self, reset: float) -> None:
        """The provider's headers say its allowance is whole again in `reset` seconds: beyond
        WINDOW, it counts over a longer window (or a bucket), so try without the rule as soon as
        it costs enough, without waiting to be calm."""
        if reset > 1.5 * WINDOW and not self.failed:
            self._shown = True

    def cut(self, now: float) -> None:
        """The pace was cut: the 429s were its doing. Forget the jitter they taught."""
        self.jitter = JITTER
        self.unsettled(now)

    def unsettled(self, until: float) -> None:
        """Something troubled the run (a pause, a cut, a recalibration) until then: no try
        without the rule before it has been calm for PROBE_AFTER seconds again."""
        self._settled_at = max(self._settled_at, until)

    def rescale(self, factor: float) -> None:
        """Token estimates changed by `factor`: hold the recent starts at the new one."""
        self._held = deque((at, t * factor) for at, t in self._held)
        self._tokens = sum(t for _, t in self._held)

    def _should_try(self, tokens: float, rpm: float | None, tpm: float | None, now: float) -> bool:
        """Is it time to try without the rule, and would that win more than PROBE_GAIN?"""
        if now < self._next_try or (not self._shown and now - self._settled_at < PROBE_AFTER):
            return False
        return max(_loss(1, rpm), _loss(tokens, tpm)) > PROBE_GAIN

    def _forget(self, now: float) -> None:
        edge = now - WINDOW - self.jitter
        held = self._held
        while held and held[0][0] <= edge:
            self._tokens -= held.popleft()[1]
        if not held:
            self._tokens = 0.0  # no drift from adding and taking away floats
        for starts in (self._beyond, self._full):
            while starts and starts[0] <= now - 5 * WINDOW:  # a 429 comes back long before
                starts.popleft()


def _allowance(amount: float, per_minute: float | None) -> float:
    """One window's allowance at the pace, and at least one request of `amount`."""
    return math.inf if per_minute is None else max(per_minute * WINDOW / 60.0, amount)


def _loss(amount: float, per_minute: float | None) -> float:
    """The share of a window's allowance that whole requests of `amount` leave unused."""
    allowance = _allowance(amount, per_minute)
    if math.isinf(allowance) or amount <= 0:
        return 0.0
    return 1 - math.floor(allowance / amount) * amount / allowance
